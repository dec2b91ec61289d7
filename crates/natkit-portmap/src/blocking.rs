//! A blocking facade over the tokio [`Client`], for programs
//! without a runtime (the `natkit` CLI, event loops). It owns a
//! current-thread runtime; the mapping's lease task runs while a
//! [`BlockingMapping`] method is blocking (e.g. [`BlockingMapping::run_until_signal`]).

use std::net::Ipv4Addr;

use tokio::runtime::Runtime;

use crate::client::{Client, Config, MappingHandle, MappingStatus, ProbeReport, UpnpEntry};
use crate::error::Error;
use crate::gateway::{Method, Protocol};

/// A blocking port-mapping client.
#[derive(Debug)]
pub struct BlockingClient {
    rt: Runtime,
    client: Client,
}

impl BlockingClient {
    /// Like [`Client::new`].
    pub fn new(config: Config) -> Result<Self, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::io("starting a tokio runtime"))?;
        let client = rt.block_on(Client::new(config))?;
        Ok(Self { rt, client })
    }

    /// The gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.client.gateway()
    }

    /// Like [`Client::probe`].
    pub fn probe(&self) -> ProbeReport {
        self.rt.block_on(self.client.probe())
    }

    /// Like [`Client::list`].
    pub fn list(&self) -> Result<Vec<UpnpEntry>, Error> {
        self.rt.block_on(self.client.list())
    }

    /// Like [`Client::remove`].
    pub fn remove(
        &self,
        protocol: Protocol,
        port: u16,
        method: Option<Method>,
    ) -> Result<Vec<Method>, Error> {
        self.rt.block_on(self.client.remove(protocol, port, method))
    }

    /// Like [`Client::map`].
    pub fn map(
        &self,
        protocol: Protocol,
        internal_port: u16,
    ) -> Result<BlockingMapping<'_>, Error> {
        let handle = self.rt.block_on(self.client.map(protocol, internal_port))?;
        Ok(BlockingMapping {
            rt: &self.rt,
            handle: Some(handle),
        })
    }
}

/// Why [`BlockingMapping::run_until_signal`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

/// A mapping kept alive while the owner blocks in one of its methods.
/// Dropping it deletes the mapping.
#[derive(Debug)]
pub struct BlockingMapping<'a> {
    rt: &'a Runtime,
    handle: Option<MappingHandle>,
}

impl BlockingMapping<'_> {
    /// The current status.
    pub fn status(&self) -> Option<MappingStatus> {
        self.handle.as_ref().map(MappingHandle::status)
    }

    /// Keeps the mapping alive until SIGINT or SIGTERM, calling `on_change`
    /// with every status change (renewal, loss, re-creation).
    pub fn run_until_signal(
        &mut self,
        mut on_change: impl FnMut(&MappingStatus),
    ) -> Result<Signal, Error> {
        let Some(handle) = self.handle.as_ref() else {
            return Ok(Signal::Terminate);
        };
        let mut watch = handle.watch();
        self.rt.block_on(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate())
                .map_err(Error::io("installing a SIGTERM handler"))?;
            let mut int = signal(SignalKind::interrupt())
                .map_err(Error::io("installing a SIGINT handler"))?;
            loop {
                tokio::select! {
                    _ = int.recv() => return Ok(Signal::Interrupt),
                    _ = term.recv() => return Ok(Signal::Terminate),
                    changed = watch.changed() => {
                        if changed.is_err() {
                            return Ok(Signal::Terminate);
                        }
                        let s = watch.borrow_and_update().clone();
                        on_change(&s);
                    }
                }
            }
        })
    }

    /// Deletes the mapping and waits for that to finish.
    pub fn remove(mut self) -> Result<(), Error> {
        match self.handle.take() {
            Some(h) => self.rt.block_on(h.remove()),
            None => Ok(()),
        }
    }
}

impl Drop for BlockingMapping<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.rt.block_on(h.remove());
        }
    }
}
