//! Asynchronous BPF ring-buffer reader on tokio.

use anyhow::Context as _;
use aya::maps::{Map, MapData, RingBuf};
use tokio::io::unix::AsyncFd;

pub struct RingReader {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl RingReader {
    /// Wrap a ring-buffer map taken from the object (`bpf.take_map("events")`).
    /// Must be called inside a tokio runtime.
    pub fn new(map: Map) -> anyhow::Result<Self> {
        let ring = RingBuf::try_from(map).context("map is not a ring buffer")?;
        // SAFETY: the AsyncFd owns the RingBuf, so the fd outlives the
        // registration (deregistered when the AsyncFd drops).
        let fd =
            unsafe { AsyncFd::register(ring) }.context("registering the ring buffer with tokio")?;
        Ok(Self { fd })
    }

    /// Wait until records are available, then hand each to `f`. Returns the
    /// number of records read.
    pub async fn read(&mut self, mut f: impl FnMut(&[u8])) -> std::io::Result<usize> {
        let mut guard = self.fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            f(&item);
            n += 1;
        }
        guard.clear_ready();
        Ok(n)
    }

    /// Read whatever is there now, without waiting.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let ring = self.fd.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            f(&item);
            n += 1;
        }
        n
    }
}
