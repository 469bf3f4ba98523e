//! softlockup: a real soft lockup cannot be caused safely on a shared
//! machine, so this test writes realistic soft-lockup report text into the
//! kernel log through /dev/kmsg (root) and checks that the collector,
//! following /dev/kmsg, turns it into a `linux.soft_lockup` record. The
//! record says `linux.kmsg.source = user`, because the lines came from
//! userspace; the parser itself is the same for kernel lines. Writes to
//! /dev/kmsg are rate-limited (10 lines / 5 s) unless
//! `kernel.printk_devkmsg` is `on`; the test sets it and restores it.

mod events_support;

use std::io::Write as _;
use std::time::Duration;

use events_support::*;
use kotel_pipelines::{Value, attr};
use kotel_receiver::events::softlockup::{Config, Softlockup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_lockup_report_from_kmsg() {
    let mut run = run::<Softlockup>(&Config::default());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = std::process::id();
    let comm = format!("kotel-t{}", pid % 100000);
    let lines = [
        format!("watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [{comm}:{pid}]"),
        "Modules linked in: loop ext4 mbcache jbd2".to_string(),
        format!("CPU: 1 UID: 0 PID: {pid} Comm: {comm} Tainted: G             L      6.18.0 #1 PREEMPT(voluntary)"),
        "Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.3 04/01/2014".to_string(),
        "RIP: 0010:native_queued_spin_lock_slowpath+0x6e/0x2e0".to_string(),
        "Code: 00 00 f0 0f ba 2b 08 0f 92 c0 0f b6 c0 c1 e0 08 89 c2 8b 03 30 e4 09 d0 a9 00 01 ff ff 75 47 85 c0 74 0e 8b 03 84 c0 74 08 f3 <90> 8b 03 84 c0 75 f8 b8 01 00 00 00 66 89 03 5b 5d 41 5c 41 5d c3".to_string(),
        "RSP: 0018:ffffb1c2c0c3bd50 EFLAGS: 00000202".to_string(),
        "Call Trace:".to_string(),
        " <TASK>".to_string(),
        " _raw_spin_lock+0x29/0x30".to_string(),
        " kotel_test_spin+0x1c/0x40 [kotel_test]".to_string(),
        " ? srso_return_thunk+0x5/0x5f".to_string(),
        " do_syscall_64+0x71/0x280".to_string(),
        " entry_SYSCALL_64_after_hwframe+0x76/0x7e".to_string(),
        " </TASK>".to_string(),
    ];
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(DEVKMSG, format!("{}\n", self.0));
        }
    }
    const DEVKMSG: &str = "/proc/sys/kernel/printk_devkmsg";
    let _restore = Restore(std::fs::read_to_string(DEVKMSG).unwrap().trim().to_string());
    std::fs::write(DEVKMSG, "on\n").unwrap();
    let mut kmsg = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .unwrap();
    for l in &lines {
        // One write is one log record; <4> = KERN_WARNING like the watchdog.
        kmsg.write_all(format!("<4>{l}\n").as_bytes()).unwrap();
    }
    let recs = run
        .capture
        .wait_for(1, Duration::from_secs(3), |r| {
            str_attr(r, "process.executable.name") == Some(comm.as_str())
        })
        .await;
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r.event_name, "linux.soft_lockup");
    assert_eq!(int(r, "cpu.logical_number"), Some(1));
    assert_eq!(int(r, "linux.lockup.duration_s"), Some(23));
    assert_eq!(int(r, "process.pid"), Some(pid as i64));
    assert_eq!(
        str_attr(r, "linux.lockup.rip"),
        Some("native_queued_spin_lock_slowpath+0x6e/0x2e0")
    );
    assert_eq!(str_attr(r, "linux.kmsg.source"), Some("user"));
    let Some(Value::Array(stack)) = attr(&r.attributes, "linux.kernel.stack") else {
        panic!("stack")
    };
    assert_eq!(stack.len(), 5);
    assert_eq!(
        stack[1].as_str(),
        Some("kotel_test_spin+0x1c/0x40 [kotel_test]")
    );
    assert!(
        r.time <= r.observed_time && r.observed_time - r.time < 5_000_000_000,
        "kmsg time converted"
    );
    let m = run.collect();
    assert!(sum_value(&m, "linux.lockup.reports", &[]) >= 1);
    run.stop().await;
}
