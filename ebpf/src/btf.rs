//! Kernel BTF: the parsed `aya` object (for CO-RE and tp_btf) plus a tiny raw
//! reader for enum values (aya does not expose type iteration).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aya::Btf;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The running kernel's parsed BTF, shared while collectors load.
static BTF: Mutex<Option<Result<Arc<Btf>, String>>> = Mutex::new(None);

/// The running kernel's BTF, parsed on first use and cached until
/// [`release_kernel_btf`]. `Err` carries the reason.
pub fn kernel_btf() -> Result<Arc<Btf>, String> {
    let mut cached = BTF.lock().unwrap_or_else(|e| e.into_inner());
    cached
        .get_or_insert_with(|| {
            if !std::path::Path::new(VMLINUX).exists() {
                return Err(format!(
                    "kernel lacks BTF ({VMLINUX} missing; needs CONFIG_DEBUG_INFO_BTF); eBPF collectors disabled"
                ));
            }
            Btf::from_sys_fs()
                .map(Arc::new)
                .map_err(|e| format!("cannot parse kernel BTF {VMLINUX}: {e}"))
        })
        .clone()
}

/// Drop the cached BTF once every collector has loaded: parsed, the kernel's
/// BTF takes tens of MiB, and it is needed again only to load programs later
/// (a reload, an autotracing capture), when it is parsed anew (~20 ms).
pub fn release_kernel_btf() {
    let dropped = BTF.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(dropped);
    // The parse made many small allocations; ask glibc to hand the freed
    // pages back instead of keeping them in its arenas.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_ne_bytes(s.try_into().unwrap()))
}

fn str_at(strs: &[u8], off: u32) -> &str {
    let s = strs.get(off as usize..).unwrap_or(&[]);
    let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
    std::str::from_utf8(&s[..end]).unwrap_or("")
}

/// Values of the enum `name` in raw BTF `data` (ENUM or ENUM64), or `None`.
pub fn enum_values(data: &[u8], name: &str) -> Option<HashMap<i64, String>> {
    if data.len() < 24 || u16::from_ne_bytes([data[0], data[1]]) != 0xeb9f {
        return None;
    }
    let hdr_len = u32_at(data, 4)? as usize;
    let type_off = u32_at(data, 8)? as usize;
    let type_len = u32_at(data, 12)? as usize;
    let str_off = u32_at(data, 16)? as usize;
    let str_len = u32_at(data, 20)? as usize;
    let types = data.get(hdr_len + type_off..hdr_len + type_off + type_len)?;
    let strs = data.get(hdr_len + str_off..hdr_len + str_off + str_len)?;
    let mut off = 0;
    while off + 12 <= types.len() {
        let name_off = u32_at(types, off)?;
        let info = u32_at(types, off + 4)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let body = off + 12;
        let extra = match kind {
            1 | 14 | 17 => 4,
            3 => 12,
            4 | 5 | 15 => vlen * 12,
            6 | 13 => vlen * 8,
            19 => vlen * 12,
            _ => 0,
        };
        if (kind == 6 || kind == 19) && str_at(strs, name_off) == name {
            let mut out = HashMap::new();
            for i in 0..vlen {
                if kind == 6 {
                    let m = body + i * 8;
                    let val = u32_at(types, m + 4)? as i32 as i64;
                    out.insert(val, str_at(strs, u32_at(types, m)?).to_string());
                } else {
                    let m = body + i * 12;
                    let lo = u32_at(types, m + 4)? as u64;
                    let hi = u32_at(types, m + 8)? as u64;
                    out.insert(
                        (hi << 32 | lo) as i64,
                        str_at(strs, u32_at(types, m)?).to_string(),
                    );
                }
            }
            return Some(out);
        }
        off = body + extra;
    }
    None
}

/// Values of an enum of the running kernel, read from its BTF.
pub fn kernel_enum(name: &str) -> Option<HashMap<i64, String>> {
    let data = std::fs::read(VMLINUX).ok()?;
    enum_values(&data, name)
}

/// Whether the kernel BTF knows the raw tracepoint `name` (`btf_trace_<name>`),
/// i.e. whether `tp_btf/<name>` can attach.
pub fn has_btf_tracepoint(name: &str) -> bool {
    match kernel_btf() {
        Ok(btf) => btf
            .id_by_type_name_kind(&format!("btf_trace_{name}"), aya_obj::btf::BtfKind::Typedef)
            .is_ok(),
        Err(_) => false,
    }
}

/// Whether the kernel BTF has a function named `name` (e.g. `bpf_iter_task`).
pub fn has_btf_tracepoint_like(name: &str) -> bool {
    match kernel_btf() {
        Ok(btf) => btf
            .id_by_type_name_kind(name, aya_obj::btf::BtfKind::Func)
            .is_ok(),
        Err(_) => false,
    }
}
