//! Model providers reached over the network.
//!
//! [`openai`] speaks the OpenAI Chat Completions API with streaming, which
//! OpenAI and most local servers (vLLM, llama.cpp, Ollama, LM Studio)
//! offer.

pub mod openai;

/// Installs rustls' process-wide crypto provider (ring), which every
/// `reqwest` client of the process (model providers, OTLP export) needs.
/// Call it once at startup, before any client is built; later calls are
/// harmless.
pub fn install_crypto_provider() {
    // Refused only when one is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
