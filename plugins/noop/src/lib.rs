//! A plugin that does nothing on every hook, with no body access: the host overhead of
//! a hook call (benchmarks).

use relay_plugin_sdk::{Hooks, Manifest, Plugin, export, manifest};

struct Noop;

impl Plugin for Noop {
    fn manifest() -> Manifest {
        let mut m = manifest(
            "noop",
            Hooks::BEFORE_REQUEST
                | Hooks::AFTER_RESPONSE
                | Hooks::ON_STREAM_CHUNK
                | Hooks::ON_STREAM_END
                | Hooks::ON_ERROR,
        );
        m.stateless = true;
        m
    }
}

export!(Noop);
