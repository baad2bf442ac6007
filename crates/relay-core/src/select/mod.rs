//! Channel selection: the compiled routing table (presets and implicit presets), the
//! strategies, credential rotation and health.

mod fast_rand;
mod health;
mod table;

pub use health::{FAILURE_THRESHOLD, Health, HealthBoard, OPEN_FOR, now_ms};
pub use table::{Channel, ChannelSet, Preset, Route, RoutingTable};
