//! # relay-plugin-api
//!
//! The home of Relay's WebAssembly plugin host (wasmtime, component model, WIT package
//! `relay:plugin@0.1.0`). **Nothing is implemented here yet**: the host, the WIT contract,
//! the guest SDK and the example plugins are the work of the plugin-host issue. The crate
//! exists so the workspace layout is the final one; it exports nothing.
