//! `wasi:io/streams` as wasmtime-wasi serves it, except that every byte a component
//! writes through a stream (files in `--dir` grants, stdout, stderr) is charged to the
//! run's write budget ([`crate::Limits::write_bytes`]) first. Past it a write fails (the
//! component sees an I/O error it can handle) and the run's log says which limit.
//! Positioned writes (`descriptor.write`, which `pwrite` becomes) are charged the same.

use std::future::Future;
use std::sync::Arc;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{ErrorCode, Host as FsHost, HostDescriptor};
use wasmtime_wasi::p2::bindings::io::streams::{
    self, Host, HostInputStream, HostOutputStream, StreamError as WitStreamError,
};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamError, StreamResult};

use crate::host::HostState;
use crate::log::LogLevel;

impl HostState {
    /// Charges `bytes` the component is about to write; past the budget the write
    /// fails (an `EDQUOT` the component sees as an I/O error) and the log names the
    /// limit (once).
    fn charge_write(&self, bytes: u64) -> StreamResult<()> {
        if self.charge_write_or_log(bytes) {
            Ok(())
        } else {
            Err(StreamError::LastOperationFailed(wasmtime::Error::new(
                std::io::Error::from_raw_os_error(rustix::io::Errno::DQUOT.raw_os_error()),
            )))
        }
    }

    /// Charges `bytes`; false (and the limit logged, once) past the budget.
    fn charge_write_or_log(&self, bytes: u64) -> bool {
        match self.run.budget.charge_write(bytes) {
            Ok(()) => true,
            Err(message) => {
                if self.run.budget.first_write_refusal() {
                    self.run
                        .log
                        .host(&self.agent_name, LogLevel::Warn, &message);
                }
                false
            }
        }
    }
}

impl Host for HostState {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<WitStreamError> {
        Host::convert_stream_error(&mut self.table, err)
    }
}

impl HostOutputStream for HostState {
    async fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        HostOutputStream::drop(&mut self.table, stream).await
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        HostOutputStream::check_write(&mut self.table, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        self.charge_write(bytes.len() as u64)?;
        HostOutputStream::write(&mut self.table, stream, bytes)
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        HostOutputStream::subscribe(&mut self.table, stream)
    }

    async fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        self.charge_write(bytes.len() as u64)?;
        HostOutputStream::blocking_write_and_flush(&mut self.table, stream, bytes).await
    }

    async fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        self.charge_write(len)?;
        HostOutputStream::blocking_write_zeroes_and_flush(&mut self.table, stream, len).await
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        self.charge_write(len)?;
        HostOutputStream::write_zeroes(&mut self.table, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        HostOutputStream::flush(&mut self.table, stream)
    }

    async fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        HostOutputStream::blocking_flush(&mut self.table, stream).await
    }

    fn splice(
        &mut self,
        dest: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        // Charged for all it may move; what it did not is given back.
        self.charge_write(len)?;
        let moved = HostOutputStream::splice(&mut self.table, dest, src, len);
        self.run.budget.settle_write(len, &moved);
        moved
    }

    async fn blocking_splice(
        &mut self,
        dest: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        self.charge_write(len)?;
        let moved = HostOutputStream::blocking_splice(&mut self.table, dest, src, len).await;
        self.run.budget.settle_write(len, &moved);
        moved
    }
}

impl HostInputStream for HostState {
    async fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        HostInputStream::drop(&mut self.table, stream).await
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        HostInputStream::read(&mut self.table, stream, len)
    }

    async fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        HostInputStream::blocking_read(&mut self.table, stream, len).await
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        HostInputStream::skip(&mut self.table, stream, len)
    }

    async fn blocking_skip(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        HostInputStream::blocking_skip(&mut self.table, stream, len).await
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        HostInputStream::subscribe(&mut self.table, stream)
    }
}

/// The instance wasmtime-wasi links `wasi:filesystem/types` as (its WIT's version;
/// components importing any 0.2.x are matched to it). Re-opening it under another
/// name would add an instance nobody imports, so [`add_to_linker`] checks the name
/// is already defined.
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Links these in place of wasmtime-wasi's own `wasi:io/streams`, and a budgeted
/// `descriptor.write` (a positioned write, `pwrite`, which goes through no stream)
/// in place of its own. Call after `wasmtime_wasi::p2::add_to_linker_async`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    // wasmtime-wasi defined it already, so defining it without shadowing must fail;
    // if it does not, the name is wrong and the budget would silently not apply.
    linker.allow_shadowing(false);
    if linker
        .instance(FILESYSTEM_TYPES)?
        .func_wrap_async("[method]descriptor.write", positioned_write)
        .is_ok()
    {
        wasmtime::bail!(
            "{FILESYSTEM_TYPES}#[method]descriptor.write was not linked by wasmtime-wasi: \
             its WIT version changed"
        );
    }
    linker.allow_shadowing(true);
    let linked =
        streams::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(linker, |s| s)
            .and_then(|()| {
                linker
                    .instance(FILESYSTEM_TYPES)?
                    .func_wrap_async("[method]descriptor.write", positioned_write)
            });
    linker.allow_shadowing(false);
    linked
}

/// `descriptor.write(buf, offset)`: charged before the write, what was not written
/// given back; past the budget it fails with `quota` and the log names the limit.
fn positioned_write(
    mut store: StoreContextMut<'_, HostState>,
    (fd, buf, offset): (Resource<Descriptor>, Vec<u8>, u64),
) -> Box<dyn Future<Output = wasmtime::Result<(Result<u64, ErrorCode>,)>> + Send + '_> {
    Box::new(async move {
        let state = store.data_mut();
        let charged = buf.len() as u64;
        if !state.charge_write_or_log(charged) {
            return Ok((Err(ErrorCode::Quota),));
        }
        let run = Arc::clone(&state.run);
        let mut fs = state.filesystem();
        let written = HostDescriptor::write(&mut fs, fd, buf, offset).await;
        run.budget.settle_write(charged, &written);
        match written {
            Ok(n) => Ok((Ok(n),)),
            Err(e) => Ok((Err(FsHost::convert_error_code(&mut fs, e)?),)),
        }
    })
}
