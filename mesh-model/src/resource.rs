//! App Mesh resources in the API's JSON form.
use std::{fmt, path::PathBuf};

use serde_json::Value;

use crate::types;

/// A resource as the typed create request of its kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Typed {
    Mesh(types::CreateMeshInput),
    VirtualNode(types::CreateVirtualNodeInput),
    VirtualService(types::CreateVirtualServiceInput),
    VirtualRouter(types::CreateVirtualRouterInput),
    Route(types::CreateRouteInput),
    VirtualGateway(types::CreateVirtualGatewayInput),
    GatewayRoute(types::CreateGatewayRouteInput),
}

impl Typed {
    /// Back to the API's JSON form.
    pub fn to_json(&self) -> Result<Value, serde_json::Error> {
        match self {
            Typed::Mesh(r) => serde_json::to_value(r),
            Typed::VirtualNode(r) => serde_json::to_value(r),
            Typed::VirtualService(r) => serde_json::to_value(r),
            Typed::VirtualRouter(r) => serde_json::to_value(r),
            Typed::Route(r) => serde_json::to_value(r),
            Typed::VirtualGateway(r) => serde_json::to_value(r),
            Typed::GatewayRoute(r) => serde_json::to_value(r),
        }
    }
}

/// The seven App Mesh resource kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Mesh,
    VirtualNode,
    VirtualService,
    VirtualRouter,
    Route,
    VirtualGateway,
    GatewayRoute,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Mesh,
        Kind::VirtualNode,
        Kind::VirtualService,
        Kind::VirtualRouter,
        Kind::Route,
        Kind::VirtualGateway,
        Kind::GatewayRoute,
    ];

    /// The API's name for the kind: `VirtualNode`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Mesh => "Mesh",
            Kind::VirtualNode => "VirtualNode",
            Kind::VirtualService => "VirtualService",
            Kind::VirtualRouter => "VirtualRouter",
            Kind::Route => "Route",
            Kind::VirtualGateway => "VirtualGateway",
            Kind::GatewayRoute => "GatewayRoute",
        }
    }

    /// The member naming a resource of this kind in the API: `virtualNodeName`.
    pub fn name_field(self) -> &'static str {
        match self {
            Kind::Mesh => "meshName",
            Kind::VirtualNode => "virtualNodeName",
            Kind::VirtualService => "virtualServiceName",
            Kind::VirtualRouter => "virtualRouterName",
            Kind::Route => "routeName",
            Kind::VirtualGateway => "virtualGatewayName",
            Kind::GatewayRoute => "gatewayRouteName",
        }
    }

    /// The CloudFormation attribute naming a resource: `VirtualNodeName`.
    pub fn name_field_pascal(self) -> &'static str {
        match self {
            Kind::Mesh => "MeshName",
            Kind::VirtualNode => "VirtualNodeName",
            Kind::VirtualService => "VirtualServiceName",
            Kind::VirtualRouter => "VirtualRouterName",
            Kind::Route => "RouteName",
            Kind::VirtualGateway => "VirtualGatewayName",
            Kind::GatewayRoute => "GatewayRouteName",
        }
    }

    /// The key `describe-*` wraps a resource in: `{"virtualNode": {...}}`.
    pub fn describe_key(self) -> &'static str {
        match self {
            Kind::Mesh => "mesh",
            Kind::VirtualNode => "virtualNode",
            Kind::VirtualService => "virtualService",
            Kind::VirtualRouter => "virtualRouter",
            Kind::Route => "route",
            Kind::VirtualGateway => "virtualGateway",
            Kind::GatewayRoute => "gatewayRoute",
        }
    }

    /// The parent a route or gateway route lives under.
    pub fn parent(self) -> Option<Kind> {
        match self {
            Kind::Route => Some(Kind::VirtualRouter),
            Kind::GatewayRoute => Some(Kind::VirtualGateway),
            _ => None,
        }
    }

    /// The API shape of the create request (`CreateVirtualNodeInput`).
    pub fn create_shape(self) -> String {
        format!("Create{}Input", self.name())
    }

    /// The API shape of the spec (`VirtualNodeSpec`).
    pub fn spec_shape(self) -> String {
        format!("{}Spec", self.name())
    }

    /// `virtual-node`, as in `aws appmesh create-virtual-node` and `--kind`.
    pub fn cli_name(self) -> &'static str {
        match self {
            Kind::Mesh => "mesh",
            Kind::VirtualNode => "virtual-node",
            Kind::VirtualService => "virtual-service",
            Kind::VirtualRouter => "virtual-router",
            Kind::Route => "route",
            Kind::VirtualGateway => "virtual-gateway",
            Kind::GatewayRoute => "gateway-route",
        }
    }

    pub fn from_cli_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.cli_name() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The format a resource was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// App Mesh API JSON (`--cli-input-json`, `describe-*`).
    ApiJson,
    /// Kubernetes `appmesh.k8s.aws/v1beta2` custom resources.
    Kubernetes,
    /// CloudFormation `AWS::AppMesh::*` resources.
    CloudFormation,
}

/// Where a resource came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based line of the resource's start, when the format tells.
    pub line: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.file.display()),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// One resource in the API's JSON form: the create request's members (`meshName`,
/// `virtualNodeName`, `spec`, `tags`, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub kind: Kind,
    pub body: serde_json::Map<String, Value>,
    pub origin: Origin,
    pub format: Format,
}

impl Resource {
    fn text(&self, field: &str) -> Option<&str> {
        self.body.get(field).and_then(Value::as_str)
    }

    pub fn mesh(&self) -> Option<&str> {
        self.text("meshName")
    }

    pub fn name(&self) -> Option<&str> {
        self.text(self.kind.name_field())
    }

    /// The virtual router of a route, the virtual gateway of a gateway route.
    pub fn parent(&self) -> Option<&str> {
        self.kind.parent().and_then(|p| self.text(p.name_field()))
    }

    pub fn spec(&self) -> Option<&Value> {
        self.body.get("spec")
    }

    /// The resource as its typed create request. Call it on validated resources: it stops at
    /// the first problem, where validation reports them all.
    pub fn typed(&self) -> Result<Typed, serde_json::Error> {
        let body = Value::Object(self.body.clone());
        Ok(match self.kind {
            Kind::Mesh => Typed::Mesh(serde_json::from_value(body)?),
            Kind::VirtualNode => Typed::VirtualNode(serde_json::from_value(body)?),
            Kind::VirtualService => Typed::VirtualService(serde_json::from_value(body)?),
            Kind::VirtualRouter => Typed::VirtualRouter(serde_json::from_value(body)?),
            Kind::Route => Typed::Route(serde_json::from_value(body)?),
            Kind::VirtualGateway => Typed::VirtualGateway(serde_json::from_value(body)?),
            Kind::GatewayRoute => Typed::GatewayRoute(serde_json::from_value(body)?),
        })
    }

    /// `VirtualNode colorteller` for messages.
    pub fn label(&self) -> String {
        format!("{} {}", self.kind, self.name().unwrap_or("(unnamed)"))
    }
}
