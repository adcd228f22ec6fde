//! The models a thread can use.

/// A model's description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// The model name, as sent to its provider.
    pub name: &'static str,
    /// The provider serving it.
    pub provider: &'static str,
    /// Name shown to people.
    pub display_name: &'static str,
    /// One-line description.
    pub description: &'static str,
}

/// The model used when a thread names none.
pub const DEFAULT_MODEL: &str = "echo";

/// Every model this server offers.
pub const MODELS: &[ModelInfo] = &[ModelInfo {
    name: "echo",
    provider: "skein",
    display_name: "Echo",
    description: "Offline, deterministic model that streams the user's input back word by word.",
}];

/// Looks a model up by name.
pub fn find_model(name: &str) -> Option<&'static ModelInfo> {
    MODELS.iter().find(|m| m.name == name)
}
