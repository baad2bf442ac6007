//! The guest plugins, built once per test binary (`scripts/build-plugins`); shared by
//! the plugin tests and the store tests (`#[path]`).

use std::path::PathBuf;
use std::sync::OnceLock;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Build the guest plugins once per test run (`scripts/build-plugins`), and return
/// the directory of the components.
pub fn plugin_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let status = std::process::Command::new("bash")
            .arg(root().join("scripts/build-plugins"))
            .status()
            .expect("run scripts/build-plugins");
        assert!(status.success(), "scripts/build-plugins failed");
        root().join("plugins/dist")
    })
}
