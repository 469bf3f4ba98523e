//! The error text for a program type the kernel refuses although kotel has
//! the capabilities (fentry on the team's VMs: EPERM even for root) must not
//! tell the user to run as root. Compiles a test-only fentry object with the
//! same clang as build.rs. On kernels that accept fentry the load succeeds and
//! there is nothing to explain; the test then checks only that.

use std::process::Command;

use kotel_ebpf::aya::EbpfLoader;
use kotel_ebpf::aya::programs::FEntry;

#[test]
fn refused_program_type_is_not_reported_as_missing_root() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kotel_fentry_probe.o");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let clang = std::env::var("BPF_CLANG").unwrap_or_else(|_| "clang-19".into());
    let st = Command::new(&clang)
        .args(["-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", "-I"])
        .arg(format!("{dir}/include"))
        .arg("-c")
        .arg(format!("{dir}/tests/fentry_probe.bpf.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("clang");
    assert!(st.success());
    let btf = kotel_ebpf::btf::kernel_btf().expect("kernel BTF");
    let data = std::fs::read(&out).unwrap();
    let mut bpf = EbpfLoader::new()
        .btf(Some(&btf))
        .load(&data)
        .expect("object loads (maps only)");
    let prog: &mut FEntry = bpf
        .program_mut("kotel_probe_fentry")
        .unwrap()
        .try_into()
        .unwrap();
    match prog.load("do_unlinkat", &btf) {
        Ok(()) => eprintln!("this kernel accepts fentry; nothing to explain"),
        Err(e) => {
            let msg = kotel_ebpf::loader::explain(&e);
            eprintln!("{msg}");
            assert!(
                kotel_ebpf::preflight::has_bpf_caps(),
                "the test runs as root"
            );
            assert!(msg.contains("kernel refused it"), "{msg}");
            assert!(msg.contains("running as root will not help"), "{msg}");
        }
    }
}
