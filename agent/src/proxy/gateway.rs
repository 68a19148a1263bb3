//! A virtual gateway served standalone (`mesh-agent gateway`): its listener ports bound on
//! this host — no redirect, no privileges — following the mesh as ports come and go. Each
//! connection goes through the port's chain (TLS as the listener says), then the gateway's
//! routes into the mesh, as a gateway pod's captured ports are in the node agent.
use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use mesh_xds::plan::PortPlan;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, info};

use super::{
    ProxyInputs, chains,
    http::{self, HttpContext, MeshClusters, Side},
    tcp::reset,
};
use crate::listen::{Acceptor, bind_listener};

/// Serves gateway `gateway` (`mesh/gateway/name`) on `address`, its ports as the mesh says,
/// until the drain begins (`inputs.drain`).
pub async fn run(gateway: String, address: IpAddr, inputs: ProxyInputs) {
    let inputs = Arc::new(inputs);
    let mut applied = inputs.state.subscribe();
    let mut bound: HashMap<u16, CancellationToken> = HashMap::new();
    let tracker = TaskTracker::new();
    loop {
        let desired: BTreeSet<u16> = match inputs.state.current() {
            Ok(plane) => plane
                .gateways
                .get(&gateway)
                .map(|ports| ports.keys().copied().collect())
                .unwrap_or_default(),
            // Said once by the state; the ports stay as they are.
            Err(_) => bound.keys().copied().collect(),
        };
        bound.retain(|port, stop| {
            let keep = desired.contains(port);
            if !keep {
                info!(%gateway, port, "gateway port closed");
                stop.cancel();
            }
            keep
        });
        for port in desired {
            if bound.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::new(address, port);
            let listener = match bind_listener("gateway listener", addr) {
                Ok(listener) => listener,
                Err(error) => {
                    error!(%gateway, %addr, %error, "cannot serve a gateway port");
                    continue;
                }
            };
            info!(%gateway, %addr, "serving gateway port");
            let stop = CancellationToken::new();
            bound.insert(port, stop.clone());
            let (gateway, inputs) = (gateway.clone(), Arc::clone(&inputs));
            tracker.spawn(serve_port(listener, gateway, port, inputs, stop));
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { break },
            () = inputs.drain.cancelled() => break,
        }
    }
    for stop in bound.values() {
        stop.cancel();
    }
    tracker.close();
    tracker.wait().await;
}

async fn serve_port(
    listener: TcpListener,
    gateway: String,
    port: u16,
    inputs: Arc<ProxyInputs>,
    stop: CancellationToken,
) {
    let errors = inputs.metrics.accept_errors("gateway");
    let mut acceptor = Acceptor::new(listener, format!("gateway {gateway} port {port}"), errors);
    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            (stream, peer) = acceptor.accept() => {
                let (gateway, inputs) = (gateway.clone(), Arc::clone(&inputs));
                tracker.spawn(handle(stream, peer, gateway, port, inputs));
            }
            () = stop.cancelled() => break,
            () = inputs.drain.cancelled() => break,
        }
    }
    drop(acceptor);
    tracker.close();
    tracker.wait().await;
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    gateway: String,
    port: u16,
    inputs: Arc<ProxyInputs>,
) {
    let Ok(plane) = inputs.state.current() else {
        return reset(stream);
    };
    let Some(chains) = plane
        .gateways
        .get(&gateway)
        .and_then(|ports| ports.get(&port))
    else {
        return reset(stream);
    };
    let local = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], port)));
    // Boxed: a TLS handshake's state is large, and an idle connection keeps its task.
    let accepted = Box::pin(chains::accept(stream, peer, chains, &inputs)).await;
    let Some((client, plan)) = accepted else {
        return;
    };
    // The plan takes HTTP only on gateway ports.
    let PortPlan::Http(plan) = plan else {
        return reset(client);
    };
    let _ = client.tcp().set_nodelay(true);
    let side = Side::gateway(gateway.clone(), Arc::new(MeshClusters));
    let context = HttpContext::new(&inputs, side, gateway, port, plan).between(peer, local);
    // Requests take the data plane current when they arrive: a long-lived connection must
    // not keep this snapshot alive.
    drop(plane);
    http::serve(client, Arc::new(context)).await;
}
