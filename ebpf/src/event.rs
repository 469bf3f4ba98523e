//! The common ring-buffer record header (`struct event_hdr` in common.bpf.h).

/// Mirror of `struct event_hdr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EventHeader {
    /// `bpf_ktime_get_boot_ns()` (CLOCK_BOOTTIME).
    pub boot_ns: u64,
    /// cgroup v2 id of the current task.
    pub cgroup_id: u64,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub cpu: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

impl EventHeader {
    pub fn comm(&self) -> String {
        c_str(&self.comm)
    }

    /// Wall-clock time of the event (Unix ns).
    pub fn unix_ns(&self) -> u64 {
        crate::clock::boot_to_unix_ns(self.boot_ns)
    }
}

/// A NUL-terminated C string from a fixed-size buffer.
pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Marker for `#[repr(C)]` plain-old-data records mirrored from C.
///
/// # Safety
/// Every bit pattern must be a valid value of the type.
pub unsafe trait Record: Copy {}

unsafe impl Record for EventHeader {}

/// Copy a record out of a ring-buffer item (which may be shorter than `T`
/// only if the C and Rust layouts disagree; then `None`).
pub fn read_record<T: Record>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is plain data (Record), read unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}
