//! Heap held by the cgroup registry per 1,000 container cgroups, measured
//! with a counting allocator (this test binary's only test, so nothing else
//! allocates meanwhile). Synthetic entries with kubelet systemd-driver paths
//! (the longest common shape, ~190 bytes).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use kotel_receiver::cgroups::{Hierarchy, Mounts, Registry};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn cache_memory_per_1000_containers() {
    let mounts = Mounts {
        hierarchies: vec![Hierarchy {
            mount_point: "/nonexistent".into(),
            root: "/".into(),
            controllers: vec![],
            number: 0,
        }],
    };
    let reg = Registry::new(mounts, vec![0], 100_000);
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..1000u64 {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{:08x}_7c2f_4f3e_9a1b_2c3d4e5f6a7b.slice/cri-containerd-{:064x}.scope",
            i, i
        );
        reg.insert(0, 1_000_000 + i, &path, 0);
    }
    let after = LIVE.load(Ordering::Relaxed);
    let bytes = after - before;
    assert_eq!(reg.containers().len(), 1000);
    eprintln!(
        "registry heap for 1,000 container cgroups: {bytes} bytes ({} bytes per entry)",
        bytes / 1000
    );
    // Path (~190 B) + parsed id/uid copies + map slots: well under 1 KiB each.
    assert!(bytes < 1_000_000, "{bytes} bytes");
}
