//! The `bindgen!` output for the `relay:plugin@0.2.0` world (host side), and nothing
//! else.
#![allow(missing_docs, unreachable_pub, clippy::all)]

wasmtime::component::bindgen!({
    path: "wit",
    world: "plugin",
});

pub use relay::plugin::types::{BodyAccess, Denial, FailureMode, Hooks, RequestPatch, StreamMode};
