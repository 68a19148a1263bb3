//! Handshakes counted by side and result, and the reason a failed one is given under.
use std::{
    collections::HashSet,
    io,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family},
};
use rustls::{AlertDescription, CertificateError, Error};

use super::verify::SanMismatch;
use crate::telemetry::metrics::Metrics;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are snake_case on the wire
pub enum HandshakeResult {
    ok,
    /// The peer's certificate (or ours, as the peer said) has expired or is not valid yet.
    expired,
    /// Not signed by a trusted CA.
    unknown_authority,
    /// Signed, but none of the expected subject alternative names.
    san_mismatch,
    /// The peer presented no certificate where one is required.
    no_certificate,
    /// The peer refused ours, or the handshake, with an alert.
    peer_refused,
    /// The peer does not speak TLS (plain text on a TLS port, or the reverse).
    not_tls,
    timeout,
    /// Our own certificate, key or trust could not be used.
    config_error,
    other,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    /// `server` (terminated here) or `client` (originated here).
    side: &'static str,
    result: HandshakeResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    /// `ok` or `error`.
    result: &'static str,
}

#[derive(Clone, Default)]
pub struct TlsMetrics {
    handshakes: Family<HandshakeLabels, Counter>,
    certificates: Family<CertificateLabels, Counter>,
    /// (side, result) failures already said in the log.
    said: Arc<Mutex<HashSet<(&'static str, HandshakeResult)>>>,
}

impl TlsMetrics {
    pub fn register(&self, metrics: &mut Metrics) {
        metrics.register(
            "mesh_agent_tls_handshakes",
            "TLS handshakes by side (server: terminated by the proxy, client: originated) and result",
            self.handshakes.clone(),
        );
        metrics.register(
            "mesh_agent_workload_certificate_requests",
            "Automatic mTLS: workload certificates asked of the control plane's CA, by result",
            self.certificates.clone(),
        );
    }

    /// Counts a workload certificate request (`ok` or `error`).
    pub fn certificate(&self, result: &'static str) {
        self.certificates
            .get_or_create(&CertificateLabels { result })
            .inc();
    }

    #[cfg(test)]
    pub fn encode_for_test(&self) -> String {
        let mut metrics = Metrics::default();
        self.register(&mut metrics);
        metrics.encode().unwrap_or_default()
    }

    /// Counts a handshake; true the first time a failure of this kind is seen on this side.
    pub fn record(&self, side: &'static str, result: HandshakeResult) -> bool {
        self.handshakes
            .get_or_create(&HandshakeLabels { side, result })
            .inc();
        result != HandshakeResult::ok
            && self
                .said
                .lock()
                .map(|mut said| said.insert((side, result)))
                .unwrap_or(false)
    }
}

/// The result and the reason of a failed handshake's error.
pub fn classify(error: &io::Error) -> (HandshakeResult, String) {
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return match error.kind() {
            io::ErrorKind::UnexpectedEof => (
                HandshakeResult::peer_refused,
                "the peer closed the connection during the handshake".into(),
            ),
            _ => (HandshakeResult::other, error.to_string()),
        };
    };
    match tls {
        Error::InvalidCertificate(certificate) => certificate_error(certificate),
        Error::NoCertificatesPresented => (
            HandshakeResult::no_certificate,
            "no client certificate presented; the listener requires one".into(),
        ),
        Error::AlertReceived(alert) => alert_error(*alert),
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => (
            HandshakeResult::not_tls,
            format!("the peer does not speak TLS ({tls})"),
        ),
        other => (HandshakeResult::other, other.to_string()),
    }
}

fn certificate_error(error: &CertificateError) -> (HandshakeResult, String) {
    match error {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => (
            HandshakeResult::expired,
            format!("certificate expired ({error:?})"),
        ),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
            HandshakeResult::expired,
            format!("certificate not valid yet ({error:?})"),
        ),
        CertificateError::UnknownIssuer => (
            HandshakeResult::unknown_authority,
            "certificate signed by an unknown authority".into(),
        ),
        CertificateError::Other(other) => match other.0.downcast_ref::<SanMismatch>() {
            Some(mismatch) => (HandshakeResult::san_mismatch, mismatch.to_string()),
            None => (
                HandshakeResult::other,
                format!("certificate refused: {other}"),
            ),
        },
        other => (
            HandshakeResult::other,
            format!("certificate refused: {other:?}"),
        ),
    }
}

/// The peer said no: what it says about our certificate.
fn alert_error(alert: AlertDescription) -> (HandshakeResult, String) {
    let result = match alert {
        AlertDescription::CertificateExpired => HandshakeResult::expired,
        AlertDescription::UnknownCA => HandshakeResult::unknown_authority,
        AlertDescription::CertificateRequired => HandshakeResult::no_certificate,
        _ => HandshakeResult::peer_refused,
    };
    (result, format!("the peer refused the handshake: {alert:?}"))
}
