//! One captured query: a mesh name of the asking pod is answered with its VIP; anything else
//! goes to the resolver the pod asked, unchanged, and its answer comes back unchanged.
use std::{net::SocketAddrV4, time::Duration};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::RecordType,
};

use super::{
    answer::{error_answer, mesh_answer, mesh_question},
    forward::{ForwardError, Forwarder},
    metrics::{DnsMetrics, FailureReason, QueryResult},
    names::{Lookup, LookupError, MeshNames},
};
use crate::redirect::orig_dst::Redirected;

/// How the query reached the agent, and so how it is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

pub struct Handler {
    pub names: MeshNames,
    pub forwarder: Forwarder,
    pub metrics: DnsMetrics,
    /// TTL of mesh answers.
    pub ttl: Duration,
}

/// A query as received, parsed when it parses.
struct Query<'a> {
    raw: &'a [u8],
    request: Option<Message>,
    query_type: Option<RecordType>,
    client: SocketAddrV4,
}

impl Handler {
    /// The answer to send back to `client`, or `None` to send nothing (the pod's resolver
    /// did not answer in time: the pod's own timeout and retries take over, as without the
    /// agent).
    pub async fn answer(
        &self,
        raw: &[u8],
        client: SocketAddrV4,
        origin: Redirected,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let request = Message::from_vec(raw).ok();
        let query_type = request
            .as_ref()
            .and_then(|r| r.queries().first())
            .map(|q| q.query_type());
        let query = Query {
            raw,
            request,
            query_type,
            client,
        };
        if let Some(request) = &query.request
            && let Some((name, query_type)) = mesh_question(request)
        {
            match self.names.lookup(origin.workload_id, &name) {
                Ok(Lookup::Mesh(vip)) => {
                    return match mesh_answer(request, query.raw, vip, self.ttl) {
                        Ok(answer) => {
                            self.metrics.query(QueryResult::answered, Some(query_type));
                            Some(answer)
                        }
                        Err(error) => self.fail(&query, FailureReason::malformed, &error),
                    };
                }
                Ok(Lookup::Other) => {}
                Err(error @ LookupError::RangeFull(_)) => {
                    return self.fail(&query, FailureReason::vip_range_full, &error);
                }
                Err(error @ LookupError::Poisoned) => {
                    return self.fail(&query, FailureReason::upstream_error, &error);
                }
            }
        }
        self.forward(&query, origin, transport).await
    }

    async fn forward(
        &self,
        query: &Query<'_>,
        origin: Redirected,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let Some(_permit) = self.forwarder.permit(origin.workload_id) else {
            return self.fail(
                query,
                FailureReason::overloaded,
                &"too many forwarded queries in flight (dns.max_in_flight, dns.max_in_flight_per_pod)",
            );
        };
        let resolver = origin.destination;
        let result = match transport {
            Transport::Udp => self.forwarder.udp(resolver, query.raw).await,
            Transport::Tcp => self.forwarder.tcp(resolver, query.raw).await,
        };
        match result {
            Ok(answer) => {
                self.metrics.query(QueryResult::forwarded, query.query_type);
                Some(answer)
            }
            Err(error @ ForwardError::Timeout { .. }) => {
                self.metrics.failed(
                    FailureReason::timeout,
                    query.query_type,
                    query.client,
                    &error,
                );
                None
            }
            Err(error @ ForwardError::Io { .. }) => {
                self.fail(query, FailureReason::upstream_error, &error)
            }
        }
    }

    /// Counts and logs a failure; the pod gets SERVFAIL.
    fn fail(
        &self,
        query: &Query<'_>,
        reason: FailureReason,
        detail: &dyn std::fmt::Display,
    ) -> Option<Vec<u8>> {
        self.metrics
            .failed(reason, query.query_type, query.client, detail);
        error_answer(query.request.as_ref(), query.raw, ResponseCode::ServFail)
    }
}
