//! The crate's one public error.

/// Why the host could not start or a plugin could not be loaded or configured.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The engine, linker or cache could not be set up.
    #[error("plugin engine: {0}")]
    Engine(String),
    /// A plugin could not be loaded.
    #[error("plugin `{plugin}`: {message}")]
    Load {
        /// Which.
        plugin: String,
        /// Why.
        message: String,
    },
}
