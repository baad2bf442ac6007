//! Like `noop`, but with full body access, so the host copies the body into each view
//! (benchmarks: the cost of a 1 KiB body).

use relay_plugin_sdk::{BodyAccess, Hooks, Manifest, Plugin, export, manifest};

struct NoopBody;

impl Plugin for NoopBody {
    fn manifest() -> Manifest {
        let mut m = manifest(
            "noop-body",
            Hooks::BEFORE_REQUEST | Hooks::AFTER_RESPONSE | Hooks::ON_STREAM_CHUNK,
        );
        m.body_access = BodyAccess::Full;
        m.stateless = true;
        m
    }
}

export!(NoopBody);
