//! Relay's benchmarks: criterion micro benchmarks under `benches/`, and the
//! end-to-end harness: `relay-load` (the load generator) and `relay-bench`
//! (the orchestrator behind `benches/run.sh`). This library holds what both
//! binaries share: machine facts and process sampling from procfs, and the inputs the
//! micro benchmarks share (`fixtures`).

pub mod fixtures;
pub mod sys;
