//! # relay-plugin-sdk
//!
//! Write a Relay plugin in Rust: a type that implements [`Plugin`], and one
//! [`export!`] line. The SDK hides the generated WIT bindings (`relay:plugin@0.2.0`),
//! fills in every hook you do not write, and re-exports what a plugin needs.
//!
//! ```ignore
//! use relay_plugin_sdk::{export, host, manifest, Hooks, Manifest, Plugin, RequestDecision,
//!                        RequestView, Denial, BodyAccess};
//!
//! struct NoSwearing;
//!
//! impl Plugin for NoSwearing {
//!     fn manifest() -> Manifest {
//!         let mut m = manifest("no-swearing", Hooks::BEFORE_REQUEST);
//!         m.body_access = BodyAccess::Messages;
//!         m
//!     }
//!
//!     fn before_request(request: RequestView) -> RequestDecision {
//!         let messages = request.messages.unwrap_or_default();
//!         if messages.contains("darn") {
//!             host::log(host::LogLevel::Info, "refused a request");
//!             return RequestDecision::Deny(Denial {
//!                 status: 400,
//!                 message: "no swearing".into(),
//!                 code: None,
//!             });
//!         }
//!         RequestDecision::Proceed
//!     }
//! }
//!
//! export!(NoSwearing);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` (the crate type must be
//! `cdylib`); the `.wasm` file is the component the relay loads. See
//! `plugins/template/` for a crate to copy and `README.md` for the gateway config.
//!
//! Rules of the sandbox: no files, sockets, environment or arguments; `println!` and
//! `eprintln!` go to the relay's log (rate-limited); each hook has a deadline (10 ms by
//! default) and each instance a memory cap (32 MiB by default); a fresh instance serves
//! each request, so globals do not carry over between requests (use [`kv`] for that).
//! A plugin that keeps nothing in globals should say so (`m.stateless = true` in its
//! manifest): the host then runs its hooks in warm, reused instances, which costs about
//! a microsecond per call instead of tens for a fresh instance.

#![allow(clippy::missing_safety_doc)]

/// The generated bindings (`wit-bindgen`). Plugins should not need them directly.
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../plugin-api/wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "export_world",
        default_bindings_module: "relay_plugin_sdk::bindings",
    });
}

pub use bindings::relay::plugin::host;
pub use bindings::relay::plugin::kv;
pub use bindings::relay::plugin::types::{
    BodyAccess, ChunkDecision, ChunkView, Denial, ErrorDecision, ErrorView, FailureMode, Hooks,
    Manifest, Reply, RequestDecision, RequestPatch, RequestView, ResponseDecision, ResponseView,
    StreamEndView, StreamMode,
};
pub use serde_json;
pub use wit_bindgen;

/// A plugin. Write `manifest` and the hooks it lists; every other hook has a default
/// that changes nothing (and the host does not call hooks the manifest leaves out).
pub trait Plugin {
    /// What the plugin is and needs: its hooks, body access, stream mode, failure
    /// mode, secrets and counters. Start from [`manifest`].
    fn manifest() -> Manifest;

    /// Check a preset item's config (JSON text; `null` when none). An error rejects
    /// the gateway's config with your message.
    fn init(config: String) -> Result<(), String> {
        let _ = config;
        Ok(())
    }

    /// Before the first attempt on a preset item.
    fn before_request(request: RequestView) -> RequestDecision {
        let _ = request;
        RequestDecision::Proceed
    }

    /// After a complete (non-streamed) answer.
    fn after_response(response: ResponseView) -> ResponseDecision {
        let _ = response;
        ResponseDecision::Proceed
    }

    /// On each piece of a streamed answer.
    fn on_stream_chunk(chunk: ChunkView) -> ChunkDecision {
        let _ = chunk;
        ChunkDecision::Pass
    }

    /// When a streamed answer ends.
    fn on_stream_end(end: StreamEndView) -> ChunkDecision {
        let _ = end;
        ChunkDecision::Pass
    }

    /// After a failed upstream attempt.
    fn on_error(error: ErrorView) -> ErrorDecision {
        let _ = error;
        ErrorDecision::Default
    }
}

impl<T: Plugin> bindings::Guest for T {
    fn manifest() -> Manifest {
        <T as Plugin>::manifest()
    }
    fn init(config: String) -> Result<(), String> {
        <T as Plugin>::init(config)
    }
    fn before_request(request: RequestView) -> RequestDecision {
        <T as Plugin>::before_request(request)
    }
    fn after_response(response: ResponseView) -> ResponseDecision {
        <T as Plugin>::after_response(response)
    }
    fn on_stream_chunk(chunk: ChunkView) -> ChunkDecision {
        <T as Plugin>::on_stream_chunk(chunk)
    }
    fn on_stream_end(end: StreamEndView) -> ChunkDecision {
        <T as Plugin>::on_stream_end(end)
    }
    fn on_error(error: ErrorView) -> ErrorDecision {
        <T as Plugin>::on_error(error)
    }
}

/// A manifest with these hooks and safe defaults: no body access, `passthrough`
/// streams, fail-open, no secrets, no counters. Change the fields you need.
pub fn manifest(name: &str, hooks: Hooks) -> Manifest {
    Manifest {
        name: name.to_owned(),
        hooks,
        body_access: BodyAccess::None,
        stream_mode: StreamMode::Passthrough,
        failure_mode: FailureMode::FailOpen,
        secrets: Vec::new(),
        metrics: Vec::new(),
        stateless: false,
    }
}

/// This preset item's config for the plugin, parsed (`Value::Null` when none or bad).
pub fn config() -> serde_json::Value {
    serde_json::from_str(&host::config()).unwrap_or(serde_json::Value::Null)
}

/// A denial with this status and message.
pub fn deny(status: u16, message: impl Into<String>) -> Denial {
    Denial {
        status,
        message: message.into(),
        code: None,
    }
}

/// An empty request patch, to fill in.
pub fn patch() -> RequestPatch {
    RequestPatch {
        set_headers: Vec::new(),
        remove_headers: Vec::new(),
        set_fields: Vec::new(),
        remove_fields: Vec::new(),
    }
}

/// Export a type implementing [`Plugin`] as the component's `relay:plugin` world.
///
/// ```ignore
/// relay_plugin_sdk::export!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export {
    ($plugin:ident) => {
        $crate::bindings::export_world!($plugin with_types_in $crate::bindings);
    };
}
