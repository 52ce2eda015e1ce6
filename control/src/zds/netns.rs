//! What a pod's network-namespace descriptor is, as far as ZDS needs to know.
//!
//! Owns: [`NetnsId`], the identity that tells "same pod sandbox" from "recreated sandbox",
//! and the check that a passed descriptor really is a network namespace.
//! Invariants: reads only (`fstat`, `fstatfs`, a `/proc` link); never enters the namespace.

use std::os::fd::{AsRawFd, BorrowedFd};

/// `NSFS_MAGIC` from `<linux/magic.h>`: the filesystem type of namespace descriptors.
const NSFS_MAGIC: i128 = 0x6e73_6673;

/// A network namespace's identity: `(st_dev, st_ino)` of its descriptor, as ztunnel keys it.
/// Two descriptors of the same namespace have the same identity, whoever opened them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

/// Checks that `fd` is a network namespace and returns its identity. The error says what
/// it is instead, for the NACK.
pub fn identify(fd: BorrowedFd<'_>) -> Result<NetnsId, String> {
    let fs = rustix::fs::fstatfs(fd).map_err(|e| format!("fstatfs on the descriptor: {e}"))?;
    if i128::from(fs.f_type) != NSFS_MAGIC {
        return Err(format!(
            "the descriptor is not a network namespace (filesystem type {:#x})",
            fs.f_type
        ));
    }
    // nsfs holds every namespace type; its /proc link names which one ("net:[4026531840]")
    // when the descriptor was opened from /proc. One opened from a bind mount (istio-cni's
    // `/var/run/netns/cni-…`) links to that path instead and is let through here: entering
    // it (`setns` with CLONE_NEWNET) is the final check, and fails for any other kind.
    if let Ok(link) = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        let link = link.to_string_lossy();
        if let Some((kind, _)) = link.split_once(":[")
            && kind != "net"
            && !kind.contains('/')
        {
            let kind: String = kind.chars().take(16).collect();
            return Err(format!(
                "the descriptor is not a network namespace (a {kind} namespace)"
            ));
        }
    }
    let st = rustix::fs::fstat(fd).map_err(|e| format!("fstat on the descriptor: {e}"))?;
    Ok(NetnsId {
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsFd;

    #[test]
    fn own_netns_is_accepted_and_stable() {
        let a = File::open("/proc/self/ns/net").unwrap();
        let b = File::open("/proc/thread-self/ns/net").unwrap();
        assert_eq!(identify(a.as_fd()).unwrap(), identify(b.as_fd()).unwrap());
    }

    #[test]
    fn other_descriptors_are_refused() {
        let file = File::open("/proc/self/status").unwrap();
        assert!(
            identify(file.as_fd())
                .unwrap_err()
                .contains("not a network namespace")
        );
        let mnt = File::open("/proc/self/ns/mnt").unwrap();
        let err = identify(mnt.as_fd()).unwrap_err();
        assert!(err.contains("mnt namespace"), "{err}");
    }

    #[test]
    fn a_bind_mounted_namespace_is_accepted() {
        // `ip netns add` bind-mounts the namespace at /run/netns/NAME (root only).
        let name = format!("rm-zds-{}", std::process::id());
        let made = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        if !made {
            eprintln!("skipped: cannot create a network namespace (needs root)");
            return;
        }
        let f = File::open(format!("/run/netns/{name}"));
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .status();
        let f = f.unwrap();
        identify(f.as_fd()).unwrap();
    }
}
