//! Cancellation safety: alone in its own test binary, so that the process's descriptor count
//! is not disturbed by other tests running in parallel.

use std::time::Duration;

use runtime::DriverChoice;
use runtime::net::{TcpListener, TcpStream};
use runtime::relay::{CopyMode, RelayOptions, relay};

const DRIVERS: [DriverChoice; 2] = [DriverChoice::IoUring, DriverChoice::Epoll];
const MODES: [CopyMode; 2] = [CopyMode::Splice, CopyMode::Buffered];

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A relay task dropped while its operations are in flight (a completion read owning its
/// buffer on io_uring, readiness waits on splice) must close every descriptor and leave
/// the event loop healthy.
#[test]
fn dropping_a_relay_mid_flight_leaks_no_fd() {
    for driver in DRIVERS {
        for mode in MODES {
            runtime::block_on(driver, async move {
                let backend = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
                let front = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
                let baddr = backend.local_addr().unwrap();
                let faddr = front.local_addr().unwrap();
                let before = open_fds();
                for _ in 0..20 {
                    let client = TcpStream::connect(faddr).await.unwrap();
                    let (a, _) = front.accept().await.unwrap();
                    let b = TcpStream::connect(baddr).await.unwrap();
                    let (server_side, _) = backend.accept().await.unwrap();
                    let task = runtime::spawn(async move {
                        let _ = relay(
                            a,
                            b,
                            &RelayOptions {
                                mode,
                                idle_timeout: None,
                            },
                        )
                        .await;
                    });
                    // Let the relay reach its in-flight reads, then cancel it.
                    runtime::time::sleep(Duration::from_millis(2)).await;
                    drop(task);
                    drop(client);
                    drop(server_side);
                }
                // Cancellations complete asynchronously; wait for the descriptors to go.
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while open_fds() > before && std::time::Instant::now() < deadline {
                    runtime::time::sleep(Duration::from_millis(10)).await;
                }
                assert_eq!(open_fds(), before, "{driver} {mode}: descriptors leaked");
                // The loop still works after the cancellations.
                let c = TcpStream::connect(faddr).await.unwrap();
                let (s, _) = front.accept().await.unwrap();
                c.write_all(b"ok").await.unwrap();
                let mut buf = [0u8; 2];
                let mut got = 0;
                while got < 2 {
                    got += s.read(&mut buf[got..]).await.unwrap();
                }
                assert_eq!(&buf, b"ok");
            })
            .unwrap();
        }
    }
}
