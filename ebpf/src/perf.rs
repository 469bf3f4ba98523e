//! Attaching `perf_event` programs to a sampling event on every online CPU.

use anyhow::Context as _;
use aya::Ebpf;
use aya::programs::perf_event::{
    PerfEvent, PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent,
};

/// Load `program` (a `SEC("perf_event")` program of `bpf`) and attach it to
/// the software cpu-clock event of every online CPU, sampling at `hz`.
/// The links live as long as `bpf`. Returns the number of CPUs attached.
pub fn attach_cpu_clock(bpf: &mut Ebpf, program: &str, hz: u64) -> anyhow::Result<usize> {
    let prog: &mut PerfEvent = bpf
        .program_mut(program)
        .with_context(|| format!("program {program} not in the object"))?
        .try_into()
        .with_context(|| format!("{program} is not a perf_event program"))?;
    prog.load()
        .map_err(|e| anyhow::anyhow!("{}", crate::loader::explain(&e)))
        .with_context(|| format!("loading {program}"))?;
    let cpus =
        aya::util::online_cpus().map_err(|(path, e)| anyhow::anyhow!("reading {path}: {e}"))?;
    let mut n = 0;
    for cpu in cpus {
        prog.attach(
            PerfEventConfig::Software(SoftwareEvent::CpuClock),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Frequency(hz.max(1)),
            false,
        )
        .map_err(|e| anyhow::anyhow!("{}", crate::loader::explain(&e)))
        .with_context(|| format!("attaching {program} to cpu-clock on CPU {cpu}"))?;
        n += 1;
    }
    Ok(n)
}
