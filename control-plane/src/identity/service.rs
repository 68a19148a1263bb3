//! The signing method, served beside ADS: agents' certificate signing requests checked
//! against the mesh being served and signed by the CA.
use std::{
    convert::Infallible,
    future::{Ready, ready},
    sync::Arc,
    task::{Context, Poll},
};

use mesh_xds::identity::{MAX_MESSAGE, SERVICE, SIGN_PATH, SignRequest, SignResponse};
use tokio::sync::watch;
use tonic::{
    Status,
    body::Body,
    codegen::{BoxFuture, Service, http},
    server::{Grpc, NamedService, UnaryService},
};
use tracing::{info, warn};

use super::{AutoMtls, SignError};
use crate::{
    ads::{MeshSource, Published},
    caller::Caller,
};

#[derive(Clone)]
pub struct IdentityService {
    mtls: Arc<AutoMtls>,
    published: watch::Receiver<Arc<Published>>,
}

impl IdentityService {
    pub fn new(mtls: Arc<AutoMtls>, published: watch::Receiver<Arc<Published>>) -> Self {
        Self { mtls, published }
    }

    fn sign(&self, caller: &Caller, request: SignRequest) -> Result<SignResponse, Status> {
        if let Err(refused) = caller.admit(&request.node_id) {
            warn!(node = %request.node_id, reason = refused.message(), "certificate signing request refused");
            return Err(refused);
        }
        let published = Arc::clone(&self.published.borrow());
        let MeshSource::Mesh(index, _, serving) = &published.mesh else {
            return Err(Status::failed_precondition("no mesh is served"));
        };
        let allowed = |workload: &str| {
            if !index.has_workload(workload) {
                return Err(SignError::Unknown(workload.to_owned()));
            }
            // From a cluster, a node gets certificates for the workloads of its pods only.
            match &serving.placement {
                Some(placement) if !placement.runs(&request.node_id, workload) => {
                    Err(SignError::NotOnNode {
                        workload: workload.to_owned(),
                        node: request.node_id.clone(),
                    })
                }
                _ => Ok(()),
            }
        };
        match self.mtls.sign(&request.csr_pem, allowed) {
            Ok(chain_pem) => {
                info!(node = %request.node_id, "workload certificate signed");
                Ok(SignResponse { chain_pem })
            }
            Err(error) => {
                warn!(node = %request.node_id, %error, "certificate signing request refused");
                Err(Status::permission_denied(error.to_string()))
            }
        }
    }
}

impl NamedService for IdentityService {
    const NAME: &'static str = SERVICE;
}

impl Service<http::Request<Body>> for IdentityService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != SIGN_PATH {
            let unknown = Status::unimplemented(format!("no method {}", request.uri().path()));
            return Box::pin(async move { Ok(unknown.into_http()) });
        }
        let method = Sign(self.clone());
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<SignResponse, SignRequest>::default();
            let mut grpc = Grpc::new(codec)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
            Ok(grpc.unary(method, request).await)
        })
    }
}

struct Sign(IdentityService);

impl UnaryService<SignRequest> for Sign {
    type Response = SignResponse;
    type Future = Ready<Result<tonic::Response<SignResponse>, Status>>;

    fn call(&mut self, request: tonic::Request<SignRequest>) -> Self::Future {
        let caller = Caller::of(&request);
        ready(
            self.0
                .sign(&caller, request.into_inner())
                .map(tonic::Response::new),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mesh_xds::plan::node_pods::NodePod;

    use super::*;
    use crate::{
        ads::AdsServer,
        compile::Serving,
        identity::tests::{csr, options, shop},
        placement::Placement,
        registry::Registry,
    };

    /// From a cluster, a node is signed for the workloads of its pods only.
    #[test]
    fn a_node_is_signed_for_its_pods_workloads_only() {
        let dir = tempfile::tempdir().unwrap();
        let placement = Placement::new(BTreeMap::from([(
            "node-1".to_owned(),
            vec![NodePod {
                ip: [10, 1, 0, 5].into(),
                workload: "shop/web".into(),
                pod: "shop/web-1".into(),
            }],
        )]));
        let serving = Serving {
            placement: Some(Arc::new(placement)),
            ..Serving::default()
        };
        let (server, _publisher) = AdsServer::new(MeshSource::Mesh(
            Arc::new(shop()),
            Arc::new(Registry::default()),
            serving,
        ));
        let service = IdentityService::new(
            Arc::new(AutoMtls::load(options(dir.path())).unwrap()),
            server.published(),
        );
        let sign = |node: &str, uri: &str| {
            service.sign(
                &Caller::default(),
                SignRequest {
                    csr_pem: csr(&[uri]),
                    node_id: node.into(),
                },
            )
        };
        assert!(sign("node-1", "spiffe://td/mesh/shop/virtualNode/web").is_ok());
        let refused = sign("node-2", "spiffe://td/mesh/shop/virtualNode/web").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused
                .message()
                .contains("shop/web has no pod on node node-2"),
            "{refused:?}"
        );
        // A workload of the mesh without a pod on the node.
        let refused = sign("node-1", "spiffe://td/mesh/shop/virtualGateway/ingress").unwrap_err();
        assert!(
            refused.message().contains("has no pod on node node-1"),
            "{refused:?}"
        );
    }
}
