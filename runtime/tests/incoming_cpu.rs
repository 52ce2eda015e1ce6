//! Listener steering by `SO_INCOMING_CPU`: when every pinned worker binds the shared port
//! with [`TcpListener::bind_on_core`], each loopback connection is accepted by the worker
//! on the core its connecting thread ran on. With the kernel's hash instead, sixteen
//! connections from two cores would all land "right" with probability 2^-16, so this test
//! fails if steering breaks.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream as StdStream};
use std::sync::mpsc;
use std::time::Duration;

use runtime::net::TcpListener;
use runtime::{Cores, DriverChoice, RuntimeConfig, Worker};

/// Connections opened from each core.
const PER_CORE: usize = 8;

/// Reserves a loopback port for a `SO_REUSEPORT` group: bound, never listening, so it
/// takes no connection, and dropped once the workers have bound theirs.
fn reserve() -> (socket2::Socket, SocketAddr) {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_reuse_port(true).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    (s, addr)
}

fn connections_stay_on_the_core_that_opened_them(driver: DriverChoice) {
    let cores: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    if cores.len() < 2 {
        eprintln!("skipped: steering needs at least 2 cores, this process has {cores:?}");
        return;
    }
    let (reservation, addr) = reserve();
    // (accepting worker's core, client's local port) for every accepted connection.
    let (tx, rx) = mpsc::channel::<(Option<usize>, u16)>();
    let config = RuntimeConfig {
        cores: Cores::List(cores.clone()),
        driver,
    };
    let rt = runtime::launch::<(), _, _>(&config, move |worker: Worker<()>| {
        let listener = TcpListener::bind_on_core(addr, worker.core())?;
        let tx = tx.clone();
        let core = worker.core();
        Ok(async move {
            worker
                .serve(listener, move |stream, peer| {
                    let _ = tx.send((core, peer.port()));
                    async move {
                        // Hold the connection until the client closes it.
                        let _ = stream.read(&mut [0u8; 1]).await;
                    }
                })
                .await;
        })
    })
    .expect("workers start");
    drop(reservation);

    let mut opened: HashMap<u16, usize> = HashMap::new();
    let mut keep = Vec::new();
    for &core in &cores {
        let (streams, ports) = std::thread::spawn(move || {
            assert!(
                core_affinity::set_for_current(core_affinity::CoreId { id: core }),
                "pinning the client thread to core {core}"
            );
            let mut streams = Vec::new();
            let mut ports = Vec::new();
            for _ in 0..PER_CORE {
                let s = StdStream::connect(addr).expect("connect");
                ports.push(s.local_addr().unwrap().port());
                streams.push(s);
            }
            (streams, ports)
        })
        .join()
        .unwrap();
        for p in ports {
            opened.insert(p, core);
        }
        keep.extend(streams);
    }

    let mut wrong = Vec::new();
    for _ in 0..opened.len() {
        let (accepted_on, port) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("every connection is accepted");
        let from = opened[&port];
        if accepted_on != Some(from) {
            wrong.push((port, from, accepted_on));
        }
    }
    drop(keep);
    rt.drain(Duration::from_secs(5));
    rt.join().unwrap();
    assert!(
        wrong.is_empty(),
        "connections accepted away from their core (port, opened on, accepted on): {wrong:?}"
    );
}

#[test]
fn steering_io_uring() {
    connections_stay_on_the_core_that_opened_them(DriverChoice::IoUring);
}

#[test]
fn steering_epoll() {
    connections_stay_on_the_core_that_opened_them(DriverChoice::Epoll);
}
