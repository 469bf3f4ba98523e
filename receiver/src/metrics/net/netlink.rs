//! A minimal rtnetlink dump client over a raw `NETLINK_ROUTE` socket, and
//! an ifindex → name cache. Enough for `RTM_GETQDISC` and `RTM_GETNEIGH`
//! dumps without a netlink crate.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDRLEN: usize = 16;
/// Receive buffer: larger than any dump skb the kernel builds (≤ 32 KiB).
const RECV_BUF: usize = 64 * 1024;

pub struct Rtnetlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnetlink {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: fd is a fresh, valid descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Dump request `msg_type` with family header `payload`; calls `f` with
    /// the body (family header + attributes) of every reply message.
    pub fn dump(
        &mut self,
        msg_type: u16,
        payload: &[u8],
        mut f: impl FnMut(&[u8]),
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let len = NLMSG_HDRLEN + payload.len();
        let mut req = Vec::with_capacity(align(len));
        req.extend_from_slice(&(len as u32).to_ne_bytes());
        req.extend_from_slice(&msg_type.to_ne_bytes());
        req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
        req.extend_from_slice(&self.seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        req.extend_from_slice(payload);
        req.resize(align(len), 0);
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: req and addr outlive the call; lengths match.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut rest = &self.buf[..n as usize];
            while rest.len() >= NLMSG_HDRLEN {
                let mlen = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
                let mtype = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
                let mseq = u32::from_ne_bytes(rest[8..12].try_into().unwrap());
                if mlen < NLMSG_HDRLEN || mlen > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let body = &rest[NLMSG_HDRLEN..mlen];
                rest = &rest[align(mlen).min(rest.len())..];
                if mseq != self.seq {
                    continue;
                }
                match i32::from(mtype) {
                    libc::NLMSG_DONE => return Ok(()),
                    libc::NLMSG_ERROR => {
                        let code = body
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap()));
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        return Ok(());
                    }
                    _ => f(body),
                }
            }
        }
    }
}

pub fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Netlink attributes in `buf`: `(type without flag bits, payload)`.
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[align(len).min(buf.len())..];
        Some((kind, payload))
    })
}

pub fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

pub fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Interface names by index, looked up once per index with
/// `if_indextoname`; indexes not seen in a cycle are forgotten, so a
/// removed (and later reused) index is looked up again.
#[derive(Default)]
pub struct IfNames {
    names: HashMap<u32, (String, bool)>,
}

impl IfNames {
    pub fn get(&mut self, index: u32) -> Option<&str> {
        let e = match self.names.entry(index) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
                // SAFETY: buf holds IF_NAMESIZE bytes, as the call requires.
                let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
                if p.is_null() {
                    return None;
                }
                // SAFETY: on success buf holds a NUL-terminated name.
                let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
                v.insert((name.to_string_lossy().into_owned(), false))
            }
        };
        e.1 = true;
        Some(&e.0)
    }

    pub fn end_cycle(&mut self) {
        self.names.retain(|_, e| std::mem::take(&mut e.1));
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Encode one attribute (for building test messages).
    pub fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = 4 + payload.len();
        let mut v = Vec::new();
        v.extend_from_slice(&(len as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(payload);
        v.resize(align(len), 0);
        v
    }

    #[test]
    fn parses_attributes() {
        let mut buf = attr(1, b"tbf\0");
        buf.extend(attr(0x8007, &attr(3, &[1, 2, 3])));
        buf.extend([9, 9]); // trailing garbage shorter than a header
        let got: Vec<_> = attrs(&buf).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (1, &b"tbf\0"[..]));
        assert_eq!(got[1].0, 7, "nested flag stripped");
        assert_eq!(attrs(got[1].1).next(), Some((3, &[1u8, 2, 3][..])));
        // A length past the end stops iteration instead of panicking.
        assert_eq!(attrs(&[200, 0, 1, 0, 0]).count(), 0);
    }

    #[test]
    fn live_dump_and_names() {
        let mut nl = Rtnetlink::open().unwrap();
        let mut n = 0;
        // tcmsg, family AF_UNSPEC: every qdisc (lo has noqueue at least).
        nl.dump(libc::RTM_GETQDISC, &[0u8; 20], |_| n += 1).unwrap();
        assert!(n >= 1);
        let mut names = IfNames::default();
        assert_eq!(names.get(1), Some("lo"));
        assert_eq!(names.get(u32::MAX), None);
        names.end_cycle();
        names.end_cycle();
        assert!(names.names.is_empty());
    }
}
