//! Workload certificates of automatic mTLS: for every virtual node whose workloads run on
//! this node and whose TLS contexts name its identity certificate, a key is made here (it
//! never leaves the agent), signed by the control plane's CA, installed in the TLS store and
//! renewed at half its lifetime. Virtual nodes with no workload here get no certificate: a
//! node holds only the identities it serves.
use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use mesh_xds::{
    channel::ControlPlaneTls,
    identity::{SignRequest, sign},
    names,
    plan::tls::{CertificateSource, KeyPair, Pem, SecretPlan},
};
use rcgen::{CertificateParams, SanType, string::Ia5String};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{DataPlane, MeshState, workloads::Workloads};
use crate::tls::TlsStore;

/// How long the control plane may take to sign.
const SIGN_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed requests are retried after this, doubling up to the most.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MOST: Duration = Duration::from_secs(30);

/// Where certificates are signed: the control plane's address (and TLS toward it) and this
/// node's id.
#[derive(Clone)]
pub struct Signer {
    pub endpoint: String,
    pub tls: Option<ControlPlaneTls>,
    pub node_id: String,
}

/// One identity's certificate as held: when to renew it, or when to try again.
struct Held {
    next: Instant,
    /// Failures in a row (for the back-off and the log).
    failures: u32,
}

/// Keeps the workload certificates of this node's virtual nodes until `stop`.
pub async fn keep_certificates(
    state: MeshState,
    workloads: Workloads,
    store: TlsStore,
    signer: Signer,
    stop: CancellationToken,
) {
    let mut applied = state.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut held: HashMap<String, Held> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = applied.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
        let Ok(plane) = state.current() else {
            continue;
        };
        let wanted = wanted(&plane, &workloads);
        let gone: Vec<String> = held
            .keys()
            .filter(|name| !wanted.contains(*name))
            .cloned()
            .collect();
        for name in gone {
            held.remove(&name);
            store.set_local(&name, None).await;
        }
        for name in wanted {
            let due = held.get(&name).is_none_or(|h| Instant::now() >= h.next);
            if !due {
                continue;
            }
            let failures = held.get(&name).map_or(0, |h| h.failures);
            let next = match issue(&name, &signer, &store).await {
                Ok(renew_in) => Held {
                    next: Instant::now() + renew_in,
                    failures: 0,
                },
                Err(error) => {
                    if failures == 0 {
                        warn!(secret = %name, %error, "workload certificate not issued; retrying");
                    }
                    store.metrics.certificate("error");
                    let wait = RETRY_FIRST
                        .saturating_mul(1 << failures.min(5))
                        .min(RETRY_MOST);
                    Held {
                        next: Instant::now() + wait,
                        failures: failures + 1,
                    }
                }
            };
            held.insert(name, next);
        }
    }
}

/// The identity certificates this node needs: those the plane's TLS contexts name, for the
/// virtual nodes of the workloads enrolled here.
fn wanted(plane: &DataPlane, workloads: &Workloads) -> BTreeSet<String> {
    let Ok(all) = workloads.all() else {
        return BTreeSet::new();
    };
    let local: BTreeSet<String> = all
        .iter()
        .filter_map(|(_, workload)| plane.virtual_node_of(workload))
        .collect();
    let clients = plane
        .clusters
        .values()
        .filter_map(|upstream| upstream.plan.upstream_tls.as_ref())
        .filter_map(|tls| tls.certificate.as_ref());
    let servers = plane
        .inbound
        .values()
        .flat_map(|inbound| inbound.ports.values())
        .filter_map(|port| port.tls.as_ref())
        .map(|chain| &chain.tls.certificate);
    clients
        .chain(servers)
        .filter_map(|source| match source {
            CertificateSource::Sds(name) => Some(name),
            CertificateSource::Given(_) => None,
        })
        .filter(|name| {
            names::spiffe_id_of_identity_secret(name)
                .and_then(names::workload_of_spiffe_id)
                .is_some_and(|node| local.contains(&node))
        })
        .cloned()
        .collect()
}

/// Makes a key, has it signed, installs the certificate; how long until it is renewed.
async fn issue(name: &str, signer: &Signer, store: &TlsStore) -> Result<Duration, String> {
    let id = names::spiffe_id_of_identity_secret(name).ok_or("not an identity")?;
    let (csr_pem, key_pem) = request(id).map_err(|e| format!("making the request: {e}"))?;
    let request = SignRequest {
        csr_pem,
        node_id: signer.node_id.clone(),
    };
    let signed = sign(&signer.endpoint, signer.tls.as_ref(), request, SIGN_TIMEOUT)
        .await
        .map_err(|status| format!("{}: {}", status.code(), status.message()))?;
    let not_after = not_after(&signed.chain_pem).ok_or("the signed certificate does not parse")?;
    let lifetime = not_after
        .duration_since(SystemTime::now())
        .map_err(|_| "the signed certificate has already expired")?;
    let secret = SecretPlan::Certificate(KeyPair {
        chain: Pem::Inline(Arc::from(signed.chain_pem.into_bytes())),
        key: Pem::Inline(Arc::from(key_pem.into_bytes())),
    });
    store.set_local(name, Some(secret)).await;
    store.metrics.certificate("ok");
    info!(identity = %id, ?lifetime, "workload certificate issued");
    Ok(lifetime / 2)
}

/// A P-256 key and a signing request whose only name is the SPIFFE ID `id`: (CSR, key) PEM.
fn request(id: &str) -> Result<(String, String), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(id)?)];
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// The end of the first certificate's validity in a PEM chain.
fn not_after(chain_pem: &str) -> Option<SystemTime> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    use x509_parser::prelude::FromDer;
    let first = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()?
        .ok()?;
    let (_, certificate) = x509_parser::certificate::X509Certificate::from_der(&first).ok()?;
    let seconds = u64::try_from(certificate.validity().not_after.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}
