//! What turns share: the configuration, the models and the MCP servers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{Config, ECHO_MODEL, ECHO_PROVIDER};
use crate::mcp::McpManager;
use crate::models::{EchoModel, Model};
use crate::providers::openai::OpenAiClient;
use crate::records::{ModelInfo, ThreadError};

/// What turns share: the configuration, the echo model, one HTTP client
/// per provider and the MCP servers.
pub struct Runtime {
    config: Arc<Config>,
    echo: Arc<EchoModel>,
    clients: Mutex<BTreeMap<String, Arc<OpenAiClient>>>,
    mcp: McpManager,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("model", &self.config.model)
            .field("model_provider", &self.config.model_provider)
            .field("mcp", &self.mcp)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime over `config`, the echo model waiting `echo_delay`
    /// between words.
    pub fn new(config: Arc<Config>, echo_delay: Duration) -> Self {
        let mcp = McpManager::new(&config.mcp_servers);
        Self {
            config,
            echo: Arc::new(EchoModel::new(echo_delay)),
            clients: Mutex::new(BTreeMap::new()),
            mcp,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The MCP servers.
    pub fn mcp(&self) -> &McpManager {
        &self.mcp
    }

    /// The model a thread or turn asks for: `model` and `provider` as
    /// given, each falling back to the configured default.
    pub fn resolve(
        &self,
        model: Option<&str>,
        provider: Option<&str>,
    ) -> Result<ModelInfo, ThreadError> {
        let model = model.map(str::trim).filter(|m| !m.is_empty());
        let provider = provider.map(str::trim).filter(|p| !p.is_empty());
        let provider = match (model, provider) {
            (Some(ECHO_MODEL), None) => ECHO_PROVIDER,
            (_, Some(p)) => p,
            (_, None) => self.config.model_provider.as_str(),
        };
        if provider == ECHO_PROVIDER {
            return match model {
                None | Some(ECHO_MODEL) => Ok(ModelInfo::echo()),
                Some(other) => Err(ThreadError::UnknownModel(format!(
                    "{other} (the offline `{ECHO_PROVIDER}` provider serves only `{ECHO_MODEL}`; \
                     configure a provider in config.toml)"
                ))),
            };
        }
        let Some(p) = self.config.providers.get(provider) else {
            return Err(ThreadError::UnknownProvider(provider.to_owned()));
        };
        let name = match model {
            Some(m) => m,
            None if provider == self.config.model_provider => self.config.model.as_str(),
            None => {
                return Err(ThreadError::UnknownModel(format!(
                    "(none): name a `model` for provider {provider:?}"
                )));
            }
        };
        Ok(ModelInfo::remote(name, p))
    }

    /// The model of a stored thread: what it recorded, or the echo model
    /// (with a warning) when its provider is no longer configured.
    pub fn stored_model(&self, model: &str, provider: Option<&str>) -> ModelInfo {
        let provider = provider.unwrap_or(if model == ECHO_MODEL {
            ECHO_PROVIDER
        } else {
            self.config.model_provider.as_str()
        });
        self.resolve(Some(model), Some(provider))
            .unwrap_or_else(|err| {
                tracing::warn!(%model, %provider, %err, "stored thread's model is not available; using echo");
                ModelInfo::echo()
            })
    }

    /// The models `model/list` offers: `echo` and the configured default
    /// (when it is another), with whether each is the default. Names are
    /// unique (a client picks a model by its name).
    pub fn models(&self) -> Vec<(ModelInfo, bool)> {
        let default = self
            .resolve(None, None)
            .unwrap_or_else(|_| ModelInfo::echo());
        let mut models = vec![];
        if !default.is_echo() {
            let shadows_echo = default.name == ECHO_MODEL;
            models.push((default, true));
            if !shadows_echo {
                models.push((ModelInfo::echo(), false));
            }
        } else {
            models.push((ModelInfo::echo(), true));
        }
        models
    }

    /// The model that serves `info`: the echo model, or the client of its
    /// provider (made on first use and shared by every turn after).
    pub(crate) fn model(&self, info: &ModelInfo) -> Result<Arc<dyn Model>, String> {
        if info.is_echo() {
            return Ok(Arc::clone(&self.echo) as Arc<dyn Model>);
        }
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&info.provider) {
            return Ok(Arc::clone(client) as Arc<dyn Model>);
        }
        let config = self
            .config
            .providers
            .get(&info.provider)
            .ok_or_else(|| format!("unknown model provider {:?}", info.provider))?;
        let client = Arc::new(OpenAiClient::new(config.clone()).map_err(|e| e.to_string())?);
        clients.insert(info.provider.clone(), Arc::clone(&client));
        Ok(client as Arc<dyn Model>)
    }

    /// Stops the MCP servers.
    pub async fn shutdown(&self) {
        self.mcp.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(text: &str) -> Runtime {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).expect("write");
        let config = Config::load_with_env(&path, &[], &|_| None).expect("config");
        Runtime::new(Arc::new(config), Duration::ZERO)
    }

    #[test]
    fn model_list_names_each_model_once() {
        // A configuration `Config::load` refuses, built by hand: a remote
        // model named `echo` as the default.
        let config = Config {
            model: ECHO_MODEL.to_owned(),
            model_provider: "openai".to_owned(),
            ..Config::default()
        };
        let rt = Runtime::new(Arc::new(config), Duration::ZERO);
        let names: Vec<String> = rt.models().into_iter().map(|(m, _)| m.name).collect();
        assert_eq!(names, vec![ECHO_MODEL.to_owned()]);
        let rt = runtime(
            "model = \"m1\"\nmodel_provider = \"local\"\n[model_providers.local]\nbase_url = \"http://127.0.0.1:1/v1\"\n",
        );
        let names: Vec<String> = rt.models().into_iter().map(|(m, _)| m.name).collect();
        assert_eq!(names, vec!["m1".to_owned(), ECHO_MODEL.to_owned()]);
    }

    #[test]
    fn models_resolve_against_the_configuration() {
        let rt = runtime(
            "model = \"m1\"\nmodel_provider = \"local\"\n[model_providers.local]\nbase_url = \"http://127.0.0.1:1/v1\"\n",
        );
        let default = rt.resolve(None, None).expect("default");
        assert_eq!(
            (default.name.as_str(), default.provider.as_str()),
            ("m1", "local")
        );
        assert!(rt.resolve(Some("echo"), None).expect("echo").is_echo());
        assert_eq!(rt.resolve(Some("m2"), None).expect("m2").provider, "local");
        assert!(matches!(
            rt.resolve(None, Some("nope")),
            Err(ThreadError::UnknownProvider(_))
        ));
        assert!(rt.resolve(Some("m2"), Some("skein")).is_err());
        let listed: Vec<String> = rt.models().into_iter().map(|(m, _)| m.name).collect();
        assert_eq!(listed, vec!["m1", "echo"]);
        let echo_only = runtime("");
        assert!(echo_only.resolve(Some("gpt"), None).is_err());
    }
}
