//! The App Mesh custom resource kinds the source watches (`appmesh.k8s.aws/v1beta2`), as the
//! App Mesh controller's CRDs define them.
use kube::api::ApiResource;
use mesh_model::kubernetes::API_GROUP;

const VERSION: &str = "v1beta2";

/// One App Mesh custom resource kind: its name, plural (the URL's), and whether its objects
/// live in namespaces (every kind but Mesh).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct AppMeshKind {
    pub(super) kind: &'static str,
    plural: &'static str,
    pub(super) namespaced: bool,
}

pub(super) const KINDS: [AppMeshKind; 6] = [
    AppMeshKind::new("Mesh", "meshes", false),
    AppMeshKind::new("VirtualNode", "virtualnodes", true),
    AppMeshKind::new("VirtualService", "virtualservices", true),
    AppMeshKind::new("VirtualRouter", "virtualrouters", true),
    AppMeshKind::new("VirtualGateway", "virtualgateways", true),
    AppMeshKind::new("GatewayRoute", "gatewayroutes", true),
];

impl AppMeshKind {
    const fn new(kind: &'static str, plural: &'static str, namespaced: bool) -> Self {
        Self {
            kind,
            plural,
            namespaced,
        }
    }

    /// The kind for dynamic API calls (no discovery round trip: the CRDs are fixed).
    pub(super) fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: API_GROUP.to_owned(),
            version: VERSION.to_owned(),
            api_version: self.api_version(),
            kind: self.kind.to_owned(),
            plural: self.plural.to_owned(),
        }
    }

    pub(super) fn api_version(&self) -> String {
        format!("{API_GROUP}/{VERSION}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_but_mesh_is_namespaced() {
        let namespaced: Vec<&str> = KINDS
            .iter()
            .filter(|k| !k.namespaced)
            .map(|k| k.kind)
            .collect();
        assert_eq!(namespaced, ["Mesh"]);
        assert_eq!(
            KINDS[1].api_resource().api_version,
            "appmesh.k8s.aws/v1beta2"
        );
    }
}
