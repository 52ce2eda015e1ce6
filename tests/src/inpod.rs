//! In-pod mode test support: pods as real network namespaces joined by a veth pair,
//! istio-cni's in-pod iptables rules installed inside a pod, code run "from the pod"
//! (`setns` on the calling thread), echo backends in a pod that record who connected, and
//! [`FakeCni`], which plays istio-cni's node agent over ZDS (the node proxy connects to it).
//!
//! Invariants:
//! - Every namespace a [`PodNet`] creates is deleted when it drops, also when the test
//!   panics; a stale namespace with the same name is deleted before creation.
//! - iptables rules, ip rules and routes are only ever changed inside a pod's namespace
//!   (`ip netns exec` / `ip -n`), never in the host's: deleting the namespace removes them.
//! - [`in_netns`] always moves the thread back to the namespace it started in (the process
//!   aborts if that is impossible, rather than run the rest of a test in the wrong one).
//! - Nothing here blocks without a deadline: every ZDS read polls with a timeout.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use control::pb::zds::{
    AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, Version, WorkloadInfo, WorkloadRequest,
    WorkloadResponse, ZdsHello, workload_request::Payload,
    workload_response::Payload as RespPayload,
};
use prost::Message;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

mod zds;
pub use zds::*;

/// ztunnel's in-pod socket mark (istio-cni's `InpodMark`): sockets carrying it bypass the
/// pod's redirect rules.
pub const INPOD_MARK: u32 = 1337;

/// Whether the in-pod tests can run here: root, `ip netns` and an `iptables-restore`.
/// Prints why and returns `Ok(false)` when not (a developer's non-root run); under CI
/// (`CI` set, as `.ci/run` does) missing support is an error instead, so the tests cannot
/// silently skip there.
pub fn supported(test: &str) -> Result<bool> {
    let reason = if !crate::is_root() {
        Some("needs root for network namespaces and iptables".to_string())
    } else if !Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        Some("`ip netns` is unavailable (install iproute2)".to_string())
    } else if RESTORE_TOOLS
        .iter()
        .all(|(restore, _)| Command::new(restore).arg("--help").output().is_err())
    {
        Some("no iptables-restore (install iptables)".to_string())
    } else {
        None
    };
    match reason {
        None => Ok(true),
        Some(why) if std::env::var_os("CI").is_some() => bail!("{test}: {why} (CI must run it)"),
        Some(why) => {
            eprintln!("{test} skipped: {why} (CI runs as root)");
            Ok(false)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Pods: network namespaces on one veth pair.
// ---------------------------------------------------------------------------------------

/// One pod: a network namespace with `eth0` at `ip` (and loopback up).
#[derive(Debug, Clone)]
pub struct Pod {
    /// The namespace's name (`ip netns`).
    pub name: String,
    pub ip: IpAddr,
    /// `/run/netns/<name>`: what istio-cni opens and hands to the node proxy.
    pub netns_path: PathBuf,
}

/// Two pods joined directly by a veth pair: `a` at 10.231.`subnet`.2/24 and `b` at
/// 10.231.`subnet`.3/24, each with a default route out of `eth0` (so a connection to any
/// address, e.g. a service VIP, reaches the pod's OUTPUT rules). Both namespaces are
/// deleted on drop.
pub struct PodNet {
    pub a: Pod,
    pub b: Pod,
    /// Namespaces created so far (deleted on drop, also after a failed setup).
    created: Vec<String>,
}

impl PodNet {
    /// Creates namespaces `<tag>-a` and `<tag>-b` (deleting stale ones of those names
    /// first). `tag` must be unique per test and process (e.g. `rmA-<pid>`). Each pair is
    /// isolated, so `subnet` need not be unique, but distinct subnets keep logs readable.
    pub fn pair(tag: &str, subnet: u8) -> Result<PodNet> {
        let pod = |suffix: &str, host: u8| {
            let name = format!("{tag}-{suffix}");
            Pod {
                netns_path: Path::new("/run/netns").join(&name),
                name,
                ip: IpAddr::V4(Ipv4Addr::new(10, 231, subnet, host)),
            }
        };
        let mut net = PodNet {
            a: pod("a", 2),
            b: pod("b", 3),
            created: Vec::new(),
        };
        for name in [net.a.name.clone(), net.b.name.clone()] {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            run("ip", &["netns", "add", &name])?;
            net.created.push(name);
        }
        // The veth pair is created straight inside the two namespaces: no host interface,
        // not even for a moment.
        run(
            "ip",
            &[
                "link",
                "add",
                "eth0",
                "netns",
                &net.a.name,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &net.b.name,
            ],
        )?;
        for pod in [&net.a, &net.b] {
            let ns = pod.name.as_str();
            let cidr = format!("{}/24", pod.ip);
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            run("ip", &["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
            run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", ns, "route", "add", "default", "dev", "eth0"])?;
        }
        Ok(net)
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        for name in self.created.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// `iptables-restore` variants tried in order, each with its matching `iptables`.
const RESTORE_TOOLS: &[(&str, &str)] = &[
    ("iptables-restore", "iptables"),
    ("iptables-nft-restore", "iptables-nft"),
    ("iptables-legacy-restore", "iptables-legacy"),
];

/// The variant that loaded istio-cni's rules once (found on first use).
static RESTORE_TOOL: OnceLock<usize> = OnceLock::new();

/// istio-cni's in-pod rules (`cni/pkg/iptables/testdata/default.golden`) in restore form.
/// The two `@DNS@` lines, and the whole raw table, are only there with DNS capture on.
const MANGLE_RULES: &str = "\
*mangle
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
COMMIT
";
const NAT_RULES: &str = "\
*nat
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A OUTPUT -j ISTIO_OUTPUT
-A PREROUTING -j ISTIO_PRERT
-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
@DNS@-A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-ports 15053
@DNS@-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
COMMIT
";
const RAW_RULES: &str = "\
*raw
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p udp -m mark --mark 0x539/0xfff -m udp --dport 53 -j CT --zone 1
-A ISTIO_PRERT -p udp -m mark ! --mark 0x539/0xfff -m udp --sport 53 -j CT --zone 1
COMMIT
";

/// The restore text istio-cni's rules amount to, with or without DNS capture.
pub fn istio_cni_rules(dns: bool) -> String {
    let nat: String = NAT_RULES
        .lines()
        .filter_map(|l| match l.strip_prefix("@DNS@") {
            Some(rule) => dns.then_some(rule),
            None => Some(l),
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let mut text = format!("{MANGLE_RULES}{nat}");
    if dns {
        text.push_str(RAW_RULES);
    }
    text
}

impl Pod {
    /// Runs `cmd args...` inside the pod's namespace (`ip netns exec`); returns its stdout.
    pub fn exec(&self, cmd: &[&str]) -> Result<String> {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(cmd);
        run("ip", &args)
    }

    /// Enrolls the pod as istio-cni does: its in-pod iptables rules (mangle and nat, plus
    /// raw with `dns`), `ip rule add fwmark 0x111/0xfff pref 32764 lookup 100` and
    /// `ip route add local 0.0.0.0/0 dev lo table 100`, all inside the pod's namespace.
    pub fn install_istio_cni_rules(&self, dns: bool) -> Result<()> {
        let rules = istio_cni_rules(dns);
        let mut errors = Vec::new();
        let tools: Vec<usize> = match RESTORE_TOOL.get() {
            Some(&i) => vec![i],
            None => (0..RESTORE_TOOLS.len()).collect(),
        };
        let mut loaded = false;
        for i in tools {
            match self.restore(RESTORE_TOOLS[i].0, &rules) {
                Ok(()) => {
                    let _ = RESTORE_TOOL.set(i);
                    loaded = true;
                    break;
                }
                Err(e) => {
                    // A partly loaded set (one table in, the next refused) goes before the
                    // next variant tries.
                    self.flush_iptables(RESTORE_TOOLS[i].1);
                    errors.push(format!("{e:#}"));
                }
            }
        }
        if !loaded {
            bail!(
                "no iptables-restore variant loaded istio-cni's rules in {}:\n{}",
                self.name,
                errors.join("\n")
            );
        }
        let ns = self.name.as_str();
        let rule = ["fwmark", "0x111/0xfff", "pref", "32764", "lookup", "100"];
        // Idempotent like istio-cni (which replaces the route): no duplicate rule.
        let _ = Command::new("ip")
            .args(["-n", ns, "rule", "del"])
            .args(rule)
            .output();
        let mut add = vec!["-n", ns, "rule", "add"];
        add.extend(rule);
        run("ip", &add)?;
        run(
            "ip",
            &[
                "-n",
                ns,
                "route",
                "replace",
                "local",
                "0.0.0.0/0",
                "dev",
                "lo",
                "table",
                "100",
            ],
        )?;
        Ok(())
    }

    /// Un-enrolls the pod: removes the jumps and the ISTIO_* chains from every table, the
    /// ip rule and table 100. Fails if an ISTIO_ chain is still there afterwards.
    pub fn remove_istio_cni_rules(&self) -> Result<()> {
        let i = RESTORE_TOOL.get().copied().unwrap_or(0);
        self.flush_iptables(RESTORE_TOOLS[i].1);
        let ns = self.name.as_str();
        let _ = Command::new("ip")
            .args([
                "-n",
                ns,
                "rule",
                "del",
                "fwmark",
                "0x111/0xfff",
                "pref",
                "32764",
            ])
            .args(["lookup", "100"])
            .output();
        let _ = Command::new("ip")
            .args(["-n", ns, "route", "flush", "table", "100"])
            .output();
        let left = self.iptables_save()?;
        if left.contains("ISTIO_") {
            bail!(
                "istio-cni rules still in {} after removal:\n{left}",
                self.name
            );
        }
        Ok(())
    }

    /// `iptables-save` inside the pod (the variant that loaded the rules).
    pub fn iptables_save(&self) -> Result<String> {
        let i = RESTORE_TOOL.get().copied().unwrap_or(0);
        let save = RESTORE_TOOLS[i].0.replace("-restore", "-save");
        self.exec(&[&save])
    }

    fn restore(&self, tool: &str, rules: &str) -> Result<()> {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, tool, "--noflush", "--wait"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {tool} in {}", self.name))?;
        child.stdin.take().unwrap().write_all(rules.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{tool} in {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Deletes the jumps to, and then the ISTIO_* chains of, every table; errors (a rule
    /// or chain that is not there) are ignored.
    fn flush_iptables(&self, iptables: &str) {
        for table in ["mangle", "nat", "raw"] {
            for (hook, chain) in [("PREROUTING", "ISTIO_PRERT"), ("OUTPUT", "ISTIO_OUTPUT")] {
                let ipt = |args: &[&str]| {
                    let _ = Command::new("ip")
                        .args(["netns", "exec", &self.name, iptables, "-w", "-t", table])
                        .args(args)
                        .output();
                };
                ipt(&["-D", hook, "-j", chain]);
                ipt(&["-F", chain]);
                ipt(&["-X", chain]);
            }
        }
    }

    /// A TCP connection from inside the pod to `target` (5 s to connect, 20 s read
    /// timeout), from an unmarked socket: what the pod's application does.
    pub fn connect(&self, target: SocketAddr) -> Result<TcpStream> {
        self.connect_marked(target, None)
    }

    /// [`Pod::connect`] from a socket with `SO_MARK` = `mark` (e.g. [`INPOD_MARK`], which
    /// bypasses the redirect rules as the node proxy's own sockets do).
    pub fn connect_marked(&self, target: SocketAddr, mark: Option<u32>) -> Result<TcpStream> {
        let sock = in_netns(&self.netns_path, || {
            socket2::Socket::new(
                socket2::Domain::for_address(target),
                socket2::Type::STREAM,
                None,
            )
        })??;
        if let Some(mark) = mark {
            sock.set_mark(mark)?;
        }
        sock.connect_timeout(&target.into(), Duration::from_secs(5))
            .with_context(|| format!("connect from pod {} to {target}", self.name))?;
        let s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(s)
    }

    /// A TCP listener bound inside the pod.
    pub fn listen(&self, addr: SocketAddr) -> Result<TcpListener> {
        in_netns(&self.netns_path, || TcpListener::bind(addr))?
            .with_context(|| format!("bind {addr} in pod {}", self.name))
    }

    /// An echo backend in the pod on its IP, `port` (see [`spawn_echo_in`]).
    pub fn echo(&self, port: u16) -> Result<EchoPeers> {
        spawn_echo_in(&self.netns_path, SocketAddr::new(self.ip, port))
    }
}

/// Runs `f` on the calling thread inside the network namespace at `netns` (a
/// `/run/netns/<name>` or `/proc/<pid>/ns/net` path), then moves the thread back. Sockets
/// `f` creates stay in that namespace after it returns.
pub fn in_netns<R>(netns: &Path, f: impl FnOnce() -> R) -> Result<R> {
    let target = File::open(netns).with_context(|| format!("open {}", netns.display()))?;
    let home = File::open("/proc/thread-self/ns/net").context("open this thread's netns")?;
    move_into_link_name_space(target.as_fd(), Some(LinkNameSpaceType::Network))
        .with_context(|| format!("setns into {}", netns.display()))?;
    /// Moves the thread home on the way out, also when `f` panics.
    struct Home(File);
    impl Drop for Home {
        fn drop(&mut self) {
            if let Err(e) =
                move_into_link_name_space(self.0.as_fd(), Some(LinkNameSpaceType::Network))
            {
                eprintln!("in_netns: cannot return to the original netns: {e}; aborting");
                std::process::abort();
            }
        }
    }
    let _home = Home(home);
    Ok(f())
}

/// An echo backend (thread per connection) that records the peer address of every
/// connection it accepted. Stops accepting when dropped.
#[must_use = "the echo server stops when its EchoPeers drops"]
pub struct EchoPeers {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
}

impl EchoPeers {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peer (source) address of each accepted connection, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }

    /// How many connections were accepted.
    pub fn count(&self) -> usize {
        self.peers.lock().unwrap().len()
    }
}

impl Drop for EchoPeers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// An echo server on `addr` inside the namespace at `netns` (the listener is bound there;
/// its connections belong to that namespace whatever thread serves them), recording the
/// source address of each connection it accepts.
pub fn spawn_echo_in(netns: &Path, addr: SocketAddr) -> Result<EchoPeers> {
    let l = in_netns(netns, || TcpListener::bind(addr))?
        .with_context(|| format!("binding echo {addr} in {}", netns.display()))?;
    l.set_nonblocking(true)?;
    let echo = EchoPeers {
        addr,
        peers: Arc::default(),
        stop: Arc::default(),
    };
    let (peers, stop) = (echo.peers.clone(), echo.stop.clone());
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((mut s, peer)) => {
                    peers.lock().unwrap().push(peer);
                    std::thread::spawn(move || {
                        let _ = s.set_nonblocking(false);
                        let Ok(mut w) = s.try_clone() else { return };
                        let _ = std::io::copy(&mut s, &mut w);
                        let _ = w.shutdown(std::net::Shutdown::Write);
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("echo {addr}: accept failed: {e}");
                    break;
                }
            }
        }
    });
    Ok(echo)
}

fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
