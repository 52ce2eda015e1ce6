//! Sockets made in another network namespace: a pod's, in in-pod mode.
//!
//! A socket belongs to the namespace its creating thread was in when it called `socket(2)`,
//! and keeps it for life; binding, connecting and I/O then work from any thread. So a core
//! that serves a pod creates the pod's sockets by stepping into the pod's namespace for the
//! one `socket(2)` call and straight back ([`Netns::run`]); nothing else of the core ever
//! runs in the pod's namespace.
//!
//! Invariant: a thread leaves [`Netns::run`] in the namespace it entered it in. If the
//! kernel refuses the way back (it cannot for a namespace we hold open), the process aborts
//! rather than let a core go on creating sockets in a pod's namespace.

use std::cell::OnceCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use crate::sys;

thread_local! {
    /// The namespace this thread started in (opened on first use).
    static HOME: OnceCell<OwnedFd> = const { OnceCell::new() };
}

/// A network namespace held open by a descriptor (from istio-cni, or `/run/netns/NAME`).
/// Equality and hashing go by the namespace's identity (device and inode), not the
/// descriptor.
pub struct Netns {
    fd: OwnedFd,
    id: (u64, u64),
}

impl Netns {
    /// Takes ownership of `fd`. Whether it names a network namespace is not checked here:
    /// [`Netns::run`] fails on one that does not.
    pub fn new(fd: OwnedFd) -> io::Result<Netns> {
        let meta = std::fs::File::from(fd.try_clone()?).metadata()?;
        Ok(Netns {
            fd,
            id: (meta.dev(), meta.ino()),
        })
    }

    /// Opens a namespace by path (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub fn open(path: &std::path::Path) -> io::Result<Netns> {
        let f = std::fs::File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Netns::new(OwnedFd::from(f))
    }

    /// The namespace's identity: (device, inode) of its nsfs file.
    pub fn id(&self) -> (u64, u64) {
        self.id
    }

    /// Runs `f` on this thread inside the namespace, then returns to the thread's own.
    /// Meant for `socket(2)`: keep `f` short and free of awaits.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> io::Result<R> {
        HOME.with(|home| {
            let home = match home.get() {
                Some(h) => h,
                None => {
                    let fd = OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net")?);
                    home.get_or_init(|| fd)
                }
            };
            sys::setns_net(self.fd.as_fd()).map_err(|e| {
                io::Error::new(e.kind(), format!("entering network namespace {self}: {e}"))
            })?;
            // Back home when `f` returns or unwinds.
            let _back = Back(home.as_fd());
            Ok(f())
        })
    }
}

/// Returns the thread to its own namespace on drop.
struct Back<'a>(BorrowedFd<'a>);

impl Drop for Back<'_> {
    fn drop(&mut self) {
        if let Err(e) = sys::setns_net(self.0) {
            // Unreachable in practice (we hold our own namespace open); going on would make
            // this core's next sockets in a pod's namespace.
            eprintln!("ringmesh: cannot return to the thread's network namespace: {e}");
            std::process::abort();
        }
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl PartialEq for Netns {
    fn eq(&self, other: &Netns) -> bool {
        self.id == other.id
    }
}

impl Eq for Netns {}

impl Hash for Netns {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Netns({self})")
    }
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}]", self.id.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entering_our_own_namespace_returns_home_and_ids_match() {
        let a = Netns::open(std::path::Path::new("/proc/self/ns/net")).unwrap();
        let b = Netns::open(std::path::Path::new("/proc/thread-self/ns/net")).unwrap();
        assert_eq!(a, b);
        let inside = a
            .run(|| std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino())
            .unwrap();
        assert_eq!(inside, a.id().1);
    }

    #[test]
    fn a_descriptor_that_is_no_namespace_is_refused_on_entry() {
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        let ns = Netns::new(OwnedFd::from(f)).unwrap();
        let err = ns.run(|| ()).unwrap_err();
        assert!(
            err.to_string().contains("entering network namespace"),
            "{err}"
        );
    }
}
