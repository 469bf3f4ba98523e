//! kotel's eBPF foundation: the embedded C/CO-RE objects and the shared
//! userspace runtime every BPF-based collector uses.
//!
//! - [`preflight`]: BTF, capabilities, tracefs and tracepoint checks with
//!   precise reasons.
//! - [`loader`]: load an object with kernel BTF and rodata overrides, then
//!   load and attach each program independently.
//! - [`ringbuf`]: async ring-buffer reader (tokio `AsyncFd`).
//! - [`maps`]: per-CPU counter and log2-histogram readers, the lost-event
//!   counters (`kotel.ebpf.events.lost`).
//! - [`ksyms`], [`dropreason`], [`clock`], [`btf`]: symbols, drop-reason
//!   names, boot-time to wall-clock conversion, kernel BTF access.

pub mod btf;
pub mod clock;
pub mod dropreason;
pub mod event;
pub mod ksyms;
pub mod loader;
pub mod maps;
pub mod perf;
pub mod preflight;
pub mod ringbuf;

/// The compiled BPF objects, one per `ebpf/<name>.bpf.c`.
pub mod objects {
    include!(concat!(env!("OUT_DIR"), "/objects.rs"));
}

pub use event::{EventHeader, read_record};
pub use loader::{Hook, LoadOptions, Loaded};
pub use ringbuf::RingReader;

/// Re-export so collectors use the same aya version.
pub use aya;
