//! `ringmesh forward`: a multi-core TCP forwarder on the runtime, with no mesh logic.
//!
//! Each core binds the listen address with `SO_REUSEPORT`, accepts, dials the target and
//! relays. It is useful on its own and it is the baseline for the relay's copy modes.
//! With `--incoming-cpu all` its listeners are steered as a node's entries are (each
//! connection stays on the worker of the core that received it), which makes two of them
//! the two-hop floor `ringmesh-bench` measures data planes against (`tcp-relay`); the
//! default is the kernel's hash, as before the flag existed.
//!
//! When the target refuses or cannot be reached, the accepted client connection is closed
//! with a reset (RST), so the client sees "connection reset" at once rather than an EOF it
//! could mistake for an empty response; the error is logged with both addresses.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use runtime::net::{TcpListener, TcpStream};
use runtime::relay::{RelayOptions, relay};
use runtime::{Runtime, RuntimeConfig, Shutdown};

use crate::node::IncomingCpu;

/// What a forwarder does.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    pub listen: SocketAddr,
    pub to: SocketAddr,
    pub relay: RelayOptions,
    /// How long a dial to the target may take before the client is reset.
    pub connect_timeout: Duration,
    /// Listener steering, as a node's outbound entry (`Capture` and `All` steer).
    pub incoming_cpu: IncomingCpu,
}

/// Starts the forwarder's workers; the caller decides how long it runs.
pub fn start(
    runtime: &RuntimeConfig,
    shutdown: Shutdown,
    config: ForwardConfig,
) -> Result<Runtime<()>, runtime::Error> {
    runtime::launch_with(runtime, shutdown, move |worker| {
        let steer = config.incoming_cpu.core(&worker, false);
        let listener = TcpListener::bind_on_core(config.listen, steer)?;
        let config = Rc::new(config.clone());
        Ok(async move {
            let index = worker.index();
            worker
                .serve(listener, move |client, peer| {
                    forward_one(client, peer, index, config.clone())
                })
                .await;
        })
    })
}

async fn forward_one(
    client: TcpStream,
    peer: SocketAddr,
    worker: usize,
    config: Rc<ForwardConfig>,
) {
    let upstream = match runtime::time::timeout(
        config.connect_timeout,
        TcpStream::connect(config.to),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(client = %peer, target = %config.to, error = %e, "dial failed, resetting client");
            let _ = client.set_zero_linger();
            return;
        }
        Err(_) => {
            tracing::warn!(client = %peer, target = %config.to, timeout = ?config.connect_timeout, "dial timed out, resetting client");
            let _ = client.set_zero_linger();
            return;
        }
    };
    match relay(client, upstream, &config.relay).await {
        Ok(stats) => {
            tracing::debug!(worker, client = %peer, from_client = stats.from_originator, to_client = stats.toward_originator, "connection done")
        }
        Err(e) => {
            tracing::debug!(worker, client = %peer, error = %e, "connection ended with an error")
        }
    }
}
