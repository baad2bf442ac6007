//! Synchronous stand-ins for the few WASI p2 stream functions a `std` guest uses to
//! print. `wasmtime-wasi`'s sync bindings run their blocking functions with
//! `block_on` on the ambient Tokio runtime, which panics on a Tokio worker thread, where
//! the relay calls hooks. Our guests only ever write to in-memory pipes, so the
//! blocking variants need no waiting: they write what fits and return.
//!
//! Everything else that would block (polling, sockets, files) stays as linked; a
//! guest that reaches one of those panics the host function, which [`Live::call`]
//! contains and reports as a trap.
//!
//! [`Live::call`]: crate::host

use bytes::Bytes;
use wasmtime::StoreContextMut;
use wasmtime::component::{ComponentType, Linker, Lower, Resource, ResourceType};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, IoError, StreamError};

use crate::state::HostState;

/// The WASI `stream-error` variant, lowered by hand.
#[derive(ComponentType, Lower)]
#[component(variant)]
enum WitStreamError {
    #[component(name = "last-operation-failed")]
    #[allow(dead_code)]
    LastOperationFailed(Resource<IoError>),
    #[component(name = "closed")]
    Closed,
}

type WriteResult = wasmtime::Result<(Result<(), WitStreamError>,)>;

fn write(
    store: &mut StoreContextMut<'_, HostState>,
    stream: &Resource<DynOutputStream>,
    bytes: Vec<u8>,
) -> WriteResult {
    let view = store.data_mut().ctx();
    let out = view.table.get_mut(stream)?;
    let room = match out.check_write() {
        Ok(n) => n,
        Err(StreamError::Trap(e)) => return Err(e),
        Err(_) => return Ok((Err(WitStreamError::Closed),)),
    };
    // What does not fit is dropped: guest output is a bounded log, not a channel.
    let take = bytes.len().min(room);
    if take > 0 {
        let mut bytes = bytes;
        bytes.truncate(take);
        match out.write(Bytes::from(bytes)) {
            Ok(()) => {}
            Err(StreamError::Trap(e)) => return Err(e),
            Err(_) => return Ok((Err(WitStreamError::Closed),)),
        }
    }
    Ok((Ok(()),))
}

/// Shadow the blocking output functions and the stream destructors in `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut streams = linker.instance("wasi:io/streams@0.2.12")?;
    streams.resource(
        "output-stream",
        ResourceType::host::<DynOutputStream>(),
        |mut store, rep| {
            let view = store.data_mut().ctx();
            view.table
                .delete(Resource::<DynOutputStream>::new_own(rep))?;
            Ok(())
        },
    )?;
    streams.resource(
        "input-stream",
        ResourceType::host::<DynInputStream>(),
        |mut store, rep| {
            let view = store.data_mut().ctx();
            view.table
                .delete(Resource::<DynInputStream>::new_own(rep))?;
            Ok(())
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-write-and-flush",
        |mut store: StoreContextMut<'_, HostState>,
         (stream, bytes): (Resource<DynOutputStream>, Vec<u8>)| {
            write(&mut store, &stream, bytes)
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-flush",
        |_store: StoreContextMut<'_, HostState>,
         (_stream,): (Resource<DynOutputStream>,)|
         -> WriteResult { Ok((Ok(()),)) },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-write-zeroes-and-flush",
        |mut store: StoreContextMut<'_, HostState>,
         (stream, len): (Resource<DynOutputStream>, u64)| {
            let len = usize::try_from(len.min(4096)).unwrap_or(0);
            write(&mut store, &stream, vec![0; len])
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
