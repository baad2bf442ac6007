//! The background runtime: a thread of its own, at a lower CPU priority, for the work
//! that does not serve requests.
//!
//! With a store, [`start`] runs [`crate::tenancy::start`] on this thread's
//! single-threaded Tokio runtime, so everything it spawns lives there:
//! - the usage writer's batches (building a thousand rows' arguments, and for Postgres
//!   encoding them);
//! - the config watcher and the key and balance refreshes;
//! - the replica heartbeat and the quota-hold reconciler;
//! - the admin API.
//!
//! The database connections opened while starting are opened from this thread too. For
//! SQLite, sqlx runs each connection on a thread of its own, spawned by the thread that
//! opens it, so those threads inherit the lower priority.
//!
//! The request workers keep only the request path. Before, this work shared worker 0's
//! runtime, and a batch of usage rows stalled the requests queued behind it for a
//! millisecond or more. Now the scheduler runs it in the workers' idle time, on another
//! core when there is one. On a saturated single core it runs at nice
//! [`BACKGROUND_NICE`] (about a tenth of a worker's share), so it delays requests
//! little and still gets time.
//!
//! The catch: a quota reservation, a statement on the request path, may wait on this
//! thread under full CPU load. It has its own deadline and falls back to reserving in
//! process (see `tenancy`).

use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::config::GatewayConfig;
use crate::tenancy::start::{Started, StoreOptions};

/// The nice value of the background thread (0 is the workers'; 19 the lowest).
pub const BACKGROUND_NICE: i32 = 10;

/// The background thread, running until [`Background::stop`].
#[derive(Debug)]
pub struct Background {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Start the store, the usage writer, the watchers and the admin API on a new
/// background thread; returns what [`crate::tenancy::start`] returns, once it has.
pub async fn start(
    config: GatewayConfig,
    opts: StoreOptions,
) -> Result<(Started, Background), String> {
    let (ready_tx, ready_rx) = oneshot::channel::<Result<Started, String>>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("relay-background".to_owned())
        .spawn(move || {
            lower_priority();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start the background runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let started = crate::tenancy::start(&config, &opts).await;
                let ok = started.is_ok();
                if ready_tx.send(started).is_ok() && ok {
                    // Serve the spawned tasks until told to stop (or the handle is gone).
                    let _ = stop_rx.await;
                }
            });
        })
        .map_err(|e| format!("cannot start the background thread: {e}"))?;
    let mut background = Background {
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    match ready_rx.await {
        Ok(Ok(started)) => Ok((started, background)),
        Ok(Err(e)) => {
            background.stop().await;
            Err(e)
        }
        Err(_) => {
            background.stop().await;
            Err("the background thread ended before the store started".to_owned())
        }
    }
}

impl Background {
    /// Stop the background runtime (its tasks are dropped) and wait for its thread.
    /// Call it after the usage writer flushed.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Joining blocks: off the runtime thread.
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::warn!("the background thread did not end cleanly");
            }
        }
    }
}

/// Lower this thread's CPU priority to [`BACKGROUND_NICE`]. On Linux a nice value
/// belongs to one thread, and threads it spawns inherit it. If it fails (a container
/// without the right), the thread runs at the workers' priority, which is a warning,
/// not an error.
fn lower_priority() {
    if let Err(e) = rustix::process::setpriority_process(None, BACKGROUND_NICE) {
        tracing::warn!(error = %e, "cannot lower the background thread's priority");
    }
}
