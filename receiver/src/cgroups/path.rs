//! What a cgroup path says about its owner: container id and runtime,
//! Kubernetes pod uid and QoS class, systemd unit. Pure string parsing, so
//! the same rules apply to v1 and v2 paths, cgroupfs and systemd drivers.

/// A container named by a cgroup path component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    /// Full id as the runtime prints it (64 hex digits for OCI runtimes).
    pub id: String,
    /// `container.runtime.name` when the path says which runtime made it.
    pub runtime: Option<&'static str>,
}

/// Everything [`parse_path`] derives from one cgroup path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathInfo {
    /// The innermost container on the path (docker-in-docker and sandboxes
    /// nest: the leaf-most one wins).
    pub container: Option<ContainerRef>,
    /// True when the last component itself names the container: the
    /// container's own cgroup, not a child cgroup inside it.
    pub container_root: bool,
    /// Kubernetes pod uid with dashes (`pod<uid>` or
    /// `kubepods-<qos>-pod<uid_with_underscores>.slice`).
    pub pod_uid: Option<String>,
    /// Pod QoS class from the kubepods level: `guaranteed`, `burstable`, `besteffort`.
    pub qos: Option<&'static str>,
    /// The innermost systemd unit (`foo.service`, `session-3.scope`), not
    /// counting container scopes.
    pub systemd_unit: Option<String>,
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// An OCI container id: 64 hex digits.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && is_hex(s)
}

/// `<prefix><64hex><suffix>` → the id.
fn strip_id<'a>(s: &'a str, prefix: &str, suffix: &str) -> Option<&'a str> {
    let id = s.strip_prefix(prefix)?.strip_suffix(suffix)?;
    is_container_id(id).then_some(id)
}

/// The container named by one path component, given its parent component.
fn container_of(component: &str, parent: &str) -> Option<ContainerRef> {
    let found = |id: &str, runtime| {
        Some(ContainerRef {
            id: id.to_owned(),
            runtime,
        })
    };
    // systemd driver scopes.
    const SCOPES: &[(&str, &str)] = &[
        ("docker-", "docker"),
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("libpod-", "podman"),
    ];
    for (prefix, runtime) in SCOPES {
        if let Some(id) = strip_id(component, prefix, ".scope") {
            return found(id, Some(*runtime));
        }
    }
    // containerd's `<slice>:cri-containerd:<id>` form (kind, containerd in docker).
    if let Some((_, rest)) = component.split_once(':') {
        for (tag, runtime) in [
            ("cri-containerd:", "containerd"),
            ("crio:", "cri-o"),
            ("docker:", "docker"),
        ] {
            if let Some(id) = rest.strip_prefix(tag).filter(|id| is_container_id(id)) {
                return found(id, Some(runtime));
            }
        }
    }
    // cgroupfs driver: CRI-O and podman keep their prefix, without `.scope`.
    if let Some(id) = strip_id(component, "crio-", "") {
        return found(id, Some("cri-o"));
    }
    if let Some(id) = strip_id(component, "libpod-", "") {
        return found(id, Some("podman"));
    }
    if is_container_id(component) {
        let runtime = match parent {
            "docker" => Some("docker"),
            "libpod_parent" => Some("podman"),
            _ => None,
        };
        return found(component, runtime);
    }
    // LXC / Incus containers are named, not hashed.
    if let Some(name) = component.strip_prefix("lxc.payload.")
        && !name.is_empty()
    {
        return found(name, Some("lxc"));
    }
    None
}

/// A Kubernetes pod uid from one component, with dashes.
fn pod_uid_of(component: &str) -> Option<String> {
    // `<pod slice>:<runtime>:<id>` carries the pod slice first.
    let component = component.split(':').next().unwrap_or(component);
    let raw = if let Some(rest) = component.strip_suffix(".slice") {
        // kubepods-pod<uid>.slice, kubepods-burstable-pod<uid>.slice
        let (_, uid) = rest.rsplit_once("-pod")?;
        rest.starts_with("kubepods").then_some(uid)?
    } else {
        component.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    let ok = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    ok.then_some(uid)
}

fn qos_of(component: &str) -> Option<&'static str> {
    let c = component.strip_suffix(".slice").unwrap_or(component);
    if c.contains("besteffort") {
        Some("besteffort")
    } else if c.contains("burstable") {
        Some("burstable")
    } else {
        None
    }
}

const UNIT_SUFFIXES: &[&str] = &[
    ".service", ".scope", ".socket", ".mount", ".swap", ".timer", ".slice",
];

/// Parse a cgroup path (relative to its hierarchy root, `/`-separated, with
/// or without the leading `/`).
pub fn parse_path(path: &str) -> PathInfo {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut info = PathInfo::default();
    let mut in_kubepods = false;
    for (i, c) in parts.iter().enumerate() {
        let parent = if i == 0 { "" } else { parts[i - 1] };
        if c.starts_with("kubepods") {
            in_kubepods = true;
            if let Some(q) = qos_of(c) {
                info.qos = Some(q);
            }
        } else if in_kubepods && info.pod_uid.is_none() && matches!(*c, "burstable" | "besteffort")
        {
            // cgroupfs driver: /kubepods/<qos>/pod<uid>.
            info.qos = qos_of(c);
        }
        if let Some(uid) = pod_uid_of(c) {
            info.pod_uid = Some(uid);
            if info.qos.is_none() && in_kubepods {
                // A pod directly under kubepods is a guaranteed pod.
                info.qos = Some("guaranteed");
            }
        }
        if let Some(container) = container_of(c, parent) {
            info.container = Some(container);
            info.container_root = i + 1 == parts.len();
            // A unit above the container is the host's, not the container's.
            info.systemd_unit = None;
            continue;
        }
        // Slices are grouping, not units worth naming; conmon scopes are
        // the runtime's monitor, a unit like any other.
        if !c.ends_with(".slice") && UNIT_SUFFIXES.iter().any(|s| c.ends_with(s)) {
            info.systemd_unit = Some((*c).to_owned());
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f0c6d1c59fdb0e0a9c3b0e1e5b2c3d4a5f6e7d8c9b0a1f2e3d4c5b6a7980123";
    const ID2: &str = "aaaabbbbccccddddeeeeffff00001111222233334444555566667777888899990";

    fn c(path: &str) -> (Option<String>, Option<&'static str>, bool) {
        let i = parse_path(path);
        let root = i.container_root;
        match i.container {
            Some(c) => (Some(c.id), c.runtime, root),
            None => (None, None, root),
        }
    }

    #[test]
    fn container_shapes() {
        let id = Some(ID.to_owned());
        let table: &[(String, Option<&str>)] = &[
            // docker, cgroupfs driver (v1 and v2).
            (format!("/docker/{ID}"), Some("docker")),
            // docker, systemd driver.
            (format!("/system.slice/docker-{ID}.scope"), Some("docker")),
            // containerd with the systemd driver (kubelet).
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0e9d5b1a_7c2f_4f3e_9a1b_2c3d4e5f6a7b.slice/cri-containerd-{ID}.scope"
                ),
                Some("containerd"),
            ),
            // containerd / dockershim with the cgroupfs driver: runtime unknown.
            (
                format!("/kubepods/burstable/pod0e9d5b1a-7c2f-4f3e-9a1b-2c3d4e5f6a7b/{ID}"),
                None,
            ),
            (
                format!("/kubepods/pod0e9d5b1a-7c2f-4f3e-9a1b-2c3d4e5f6a7b/{ID}"),
                None,
            ),
            // CRI-O, systemd and cgroupfs drivers.
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0e9d5b1a_7c2f_4f3e_9a1b_2c3d4e5f6a7b.slice/crio-{ID}.scope"
                ),
                Some("cri-o"),
            ),
            (
                format!("/kubepods/besteffort/pod0e9d5b1a-7c2f-4f3e-9a1b-2c3d4e5f6a7b/crio-{ID}"),
                Some("cri-o"),
            ),
            // podman, systemd (rootful and rootless) and cgroupfs.
            (format!("/machine.slice/libpod-{ID}.scope"), Some("podman")),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
                ),
                Some("podman"),
            ),
            (format!("/libpod_parent/libpod-{ID}"), Some("podman")),
            (format!("/libpod_parent/{ID}"), Some("podman")),
            // kind / containerd inside docker: the colon form.
            (
                format!(
                    "/system.slice/containerd.service/kubepods-burstable-pod0e9d5b1a_7c2f_4f3e_9a1b_2c3d4e5f6a7b.slice:cri-containerd:{ID}"
                ),
                Some("containerd"),
            ),
            // docker-in-docker: the inner container wins.
            (format!("/docker/{ID2}/docker/{ID}"), Some("docker")),
            // GitHub Actions, ECS: bare ids.
            (format!("/actions_job/{ID}"), None),
            (format!("/ecs/5a0d5b9b2f3c4e1f8a7b6c5d4e3f2a1b/{ID}"), None),
        ];
        for (path, runtime) in table {
            assert_eq!(c(path), (id.clone(), *runtime, true), "{path}");
        }
        assert_eq!(
            c("/lxc.payload.web1"),
            (Some("web1".into()), Some("lxc"), true)
        );
    }

    #[test]
    fn not_containers() {
        for path in [
            "/",
            "",
            "/system.slice/sshd.service",
            "/user.slice/user-0.slice/session-3.scope",
            "/kubepods.slice/kubepods-burstable.slice",
            // conmon is CRI-O's / podman's monitor, not the container.
            &format!("/machine.slice/libpod-conmon-{ID}.scope"),
            &format!("/system.slice/crio-conmon-{ID}.scope"),
            // Too short / not hex.
            "/docker/3f0c6d1c59fd",
            &format!("/docker/{}", "g".repeat(64)),
            "/process_api/aaf90133919561136a70a8d7310e186d",
        ] {
            assert_eq!(c(path).0, None, "{path}");
        }
    }

    #[test]
    fn child_cgroup_of_a_container() {
        let i = parse_path(&format!("/docker/{ID}/system.slice/nginx.service"));
        assert_eq!(i.container.unwrap().id, ID);
        assert!(!i.container_root);
        assert_eq!(i.systemd_unit.as_deref(), Some("nginx.service"));
        // A host unit above the container is not the container's unit.
        let i = parse_path(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(i.systemd_unit, None);
    }

    #[test]
    fn kubernetes_pod_and_qos() {
        let uid = "0e9d5b1a-7c2f-4f3e-9a1b-2c3d4e5f6a7b";
        let cases = [
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0e9d5b1a_7c2f_4f3e_9a1b_2c3d4e5f6a7b.slice",
                "burstable",
            ),
            (
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0e9d5b1a_7c2f_4f3e_9a1b_2c3d4e5f6a7b.slice",
                "besteffort",
            ),
            (
                "/kubepods.slice/kubepods-pod0e9d5b1a_7c2f_4f3e_9a1b_2c3d4e5f6a7b.slice",
                "guaranteed",
            ),
            (
                "/kubepods/burstable/pod0e9d5b1a-7c2f-4f3e-9a1b-2c3d4e5f6a7b",
                "burstable",
            ),
            (
                "/kubepods/pod0e9d5b1a-7c2f-4f3e-9a1b-2c3d4e5f6a7b",
                "guaranteed",
            ),
        ];
        for (path, qos) in cases {
            let i = parse_path(path);
            assert_eq!(i.pod_uid.as_deref(), Some(uid), "{path}");
            assert_eq!(i.qos, Some(qos), "{path}");
            assert!(i.container.is_none());
        }
        // `pod` prefixes outside kubepods need a real uid.
        assert_eq!(parse_path("/podman").pod_uid, None);
        assert_eq!(parse_path("/pods/podcast").pod_uid, None);
    }

    #[test]
    fn systemd_units() {
        let u = |p: &str| parse_path(p).systemd_unit;
        assert_eq!(
            u("/system.slice/sshd.service").as_deref(),
            Some("sshd.service")
        );
        assert_eq!(
            u("/user.slice/user-1000.slice/user@1000.service/app.slice/tmux-spawn-1.scope")
                .as_deref(),
            Some("tmux-spawn-1.scope")
        );
        assert_eq!(u("/system.slice"), None);
        assert_eq!(
            u("/system.slice/var-lib.mount").as_deref(),
            Some("var-lib.mount")
        );
        assert_eq!(u("/kotel"), None);
    }
}
