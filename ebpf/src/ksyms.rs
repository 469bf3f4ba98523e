//! Kernel symboliser over `/proc/kallsyms` (text symbols), cached.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Ksyms {
    addrs: Vec<u64>,
    names: Vec<(String, Option<String>)>,
}

impl Ksyms {
    pub fn parse(text: &str) -> Self {
        let mut syms: Vec<(u64, String, Option<String>)> = Vec::new();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr == 0 {
                continue;
            }
            let module = it
                .next()
                .map(|m| m.trim_matches(|c| c == '[' || c == ']').to_string());
            syms.push((addr, name.to_string(), module));
        }
        syms.sort_by_key(|s| s.0);
        let addrs = syms.iter().map(|s| s.0).collect();
        let names = syms.into_iter().map(|s| (s.1, s.2)).collect();
        Self { addrs, names }
    }

    pub fn load() -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string("/proc/kallsyms")?))
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The symbol containing `addr`: (name, offset, module).
    pub fn lookup(&self, addr: u64) -> Option<(&str, u64, Option<&str>)> {
        let i = self.addrs.partition_point(|&a| a <= addr);
        if i == 0 {
            return None;
        }
        let (name, module) = &self.names[i - 1];
        Some((name, addr - self.addrs[i - 1], module.as_deref()))
    }

    /// Address of the (first) text symbol `name`.
    pub fn address_of(&self, name: &str) -> Option<u64> {
        self.names
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| self.addrs[i])
    }

    /// `func+0x1a`, `func+0x1a [module]`, or the hex address when unknown.
    pub fn format(&self, addr: u64) -> String {
        match self.lookup(addr) {
            Some((n, off, None)) => format!("{n}+{off:#x}"),
            Some((n, off, Some(m))) => format!("{n}+{off:#x} [{m}]"),
            None => format!("{addr:#x}"),
        }
    }
}

/// The process-wide cached symbol table (reloaded at most once a minute, so
/// modules loaded later appear).
pub fn get() -> Arc<Ksyms> {
    static CACHE: Mutex<Option<(Instant, Arc<Ksyms>)>> = Mutex::new(None);
    let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, k)) = c.as_ref()
        && (at.elapsed() < Duration::from_secs(60) || k.is_empty())
    {
        return k.clone();
    }
    let k = Arc::new(Ksyms::load().unwrap_or_else(|e| {
        tracing::warn!("cannot read /proc/kallsyms: {e}; kernel addresses stay unsymbolised");
        Ksyms {
            addrs: Vec::new(),
            names: Vec::new(),
        }
    }));
    *c = Some((Instant::now(), k.clone()));
    k
}

/// Symbolise one address with the cached table.
pub fn symbolize(addr: u64) -> String {
    get().format(addr)
}

#[cfg(test)]
mod tests {
    #[test]
    fn range_lookup() {
        let k = super::Ksyms::parse(
            "ffffffff81000000 T _text\nffffffff81000100 t foo\nffffffff81000200 d data\nffffffffc0000000 t bar\t[mymod]\n",
        );
        assert_eq!(k.format(0xffffffff81000110), "foo+0x10");
        assert_eq!(k.format(0xffffffff81000210), "foo+0x110");
        assert_eq!(k.format(0xffffffffc0000004), "bar+0x4 [mymod]");
        assert_eq!(k.format(0x10), "0x10");
    }
}
