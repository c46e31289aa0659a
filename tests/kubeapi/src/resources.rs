//! The resources the double serves and the discovery documents that list them.

use serde_json::{json, Value};

/// The verbs of a resource every client may use.
const ALL_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// The verbs of a read-only view.
const READ_VERBS: &[&str] = &["get", "list", "watch"];

/// One resource type: where it lives and how it behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, empty for the core group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// Plural name, the path segment.
    pub plural: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// `kind` of one object.
    pub kind: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Whether it has a `/status` subresource (create wipes status, writes to the main
    /// resource keep it).
    pub status: bool,
    /// Whether clients may only read it (a view derived from another resource).
    pub read_only: bool,
}

impl ResourceType {
    /// `apiVersion` of its objects.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural` or `plural.group`, as error messages name it.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Unique key of this resource type: `group/plural`.
    pub fn key(&self) -> &'static str {
        match (self.group, self.plural) {
            ("", "services") => "/services",
            ("", "nodes") => "/nodes",
            ("", "namespaces") => "/namespaces",
            ("", "events") => "/events",
            ("discovery.k8s.io", "endpointslices") => "discovery.k8s.io/endpointslices",
            ("events.k8s.io", "events") => "events.k8s.io/events",
            _ => "unknown",
        }
    }

    fn verbs(&self) -> &'static [&'static str] {
        if self.read_only {
            READ_VERBS
        } else {
            ALL_VERBS
        }
    }
}

/// core/v1 Services.
pub const SERVICES: ResourceType = ResourceType {
    group: "",
    version: "v1",
    plural: "services",
    singular: "service",
    kind: "Service",
    namespaced: true,
    short_names: &["svc"],
    status: true,
    read_only: false,
};

/// core/v1 Nodes.
pub const NODES: ResourceType = ResourceType {
    group: "",
    version: "v1",
    plural: "nodes",
    singular: "node",
    kind: "Node",
    namespaced: false,
    short_names: &["no"],
    status: true,
    read_only: false,
};

/// core/v1 Namespaces.
pub const NAMESPACES: ResourceType = ResourceType {
    group: "",
    version: "v1",
    plural: "namespaces",
    singular: "namespace",
    kind: "Namespace",
    namespaced: false,
    short_names: &["ns"],
    status: true,
    read_only: false,
};

/// core/v1 Events: a read-only view converted from events.k8s.io/v1 Events.
pub const CORE_EVENTS: ResourceType = ResourceType {
    group: "",
    version: "v1",
    plural: "events",
    singular: "event",
    kind: "Event",
    namespaced: true,
    short_names: &["ev"],
    status: false,
    read_only: true,
};

/// discovery.k8s.io/v1 EndpointSlices.
pub const ENDPOINT_SLICES: ResourceType = ResourceType {
    group: "discovery.k8s.io",
    version: "v1",
    plural: "endpointslices",
    singular: "endpointslice",
    kind: "EndpointSlice",
    namespaced: true,
    short_names: &[],
    status: false,
    read_only: false,
};

/// events.k8s.io/v1 Events, what kube-runtime's `Recorder` writes.
pub const EVENTS: ResourceType = ResourceType {
    group: "events.k8s.io",
    version: "v1",
    plural: "events",
    singular: "event",
    kind: "Event",
    namespaced: true,
    short_names: &["ev"],
    status: false,
    read_only: false,
};

/// Every resource served.
pub const ALL: &[ResourceType] = &[
    SERVICES,
    NODES,
    NAMESPACES,
    CORE_EVENTS,
    ENDPOINT_SLICES,
    EVENTS,
];

/// The resource at `group/version/plural`, if served.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    ALL.iter()
        .find(|rt| rt.group == group && rt.version == version && rt.plural == plural)
}

/// The resource of an object's `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    ALL.iter()
        .find(|rt| rt.api_version() == api_version && rt.kind == kind && !rt.read_only)
}

/// An object's `apiVersion` and `kind` (empty when missing).
pub fn api_version_and_kind(object: &Value) -> (&str, &str) {
    let field = |name: &str| object.get(name).and_then(Value::as_str).unwrap_or_default();
    (field("apiVersion"), field("kind"))
}

/// The resource with this key (see [`ResourceType::key`]).
pub fn by_key(key: &str) -> Option<&'static ResourceType> {
    ALL.iter().find(|rt| rt.key() == key)
}

/// Groups other than core, with their one version each.
fn groups() -> Vec<(&'static str, &'static str)> {
    let mut groups: Vec<(&'static str, &'static str)> = Vec::new();
    for rt in ALL {
        if !rt.group.is_empty() && !groups.iter().any(|(g, _)| *g == rt.group) {
            groups.push((rt.group, rt.version));
        }
    }
    groups
}

/// Whether `group/version` is served.
pub fn has_group_version(group: &str, version: &str) -> bool {
    ALL.iter()
        .any(|rt| rt.group == group && rt.version == version)
}

/// `GET /api`: APIVersions.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// `GET /apis`: APIGroupList.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = groups().into_iter().map(|(g, v)| api_group(g, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`: APIGroup.
pub fn api_group_doc(group: &str) -> Option<Value> {
    groups()
        .into_iter()
        .find(|(g, _)| *g == group)
        .map(|(g, v)| {
            let mut doc = api_group(g, v);
            if let Some(obj) = doc.as_object_mut() {
                obj.insert("kind".into(), json!("APIGroup"));
                obj.insert("apiVersion".into(), json!("v1"));
            }
            doc
        })
}

fn api_group(group: &str, version: &str) -> Value {
    let gv = format!("{group}/{version}");
    json!({
        "name": group,
        "versions": [{"groupVersion": gv, "version": version}],
        "preferredVersion": {"groupVersion": gv, "version": version},
    })
}

/// `GET /api/v1` or `/apis/<group>/<version>`: APIResourceList.
pub fn api_resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for rt in ALL
        .iter()
        .filter(|rt| rt.group == group && rt.version == version)
    {
        resources.push(json!({
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": rt.verbs(),
            "shortNames": rt.short_names,
        }));
        if rt.status {
            resources.push(json!({
                "name": format!("{}/status", rt.plural),
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}

/// `GET /version`.
pub fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0+kube-double",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// The path of one object of a resource, as OpenAPI names it.
fn object_path(rt: &ResourceType) -> String {
    let prefix = if rt.group.is_empty() {
        format!("/api/{}", rt.version)
    } else {
        format!("/apis/{}/{}", rt.group, rt.version)
    };
    if rt.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", rt.plural)
    } else {
        format!("{prefix}/{}/{{name}}", rt.plural)
    }
}

/// `GET /openapi/v3`: the index of per-group-version documents.
pub fn openapi_v3_root() -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs: Vec<(&str, &str)> = ALL.iter().map(|rt| (rt.group, rt.version)).collect();
    gvs.dedup();
    for (group, version) in gvs {
        let key = if group.is_empty() {
            format!("api/{version}")
        } else {
            format!("apis/{group}/{version}")
        };
        let url = format!("/openapi/v3/{key}?hash=kube-double-{group}-{version}");
        paths.insert(key, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/api/v1` or `/openapi/v3/apis/G/V`: a minimal OpenAPI v3 document.
///
/// It carries no schemas, only each writable resource's PATCH operation with its
/// `x-kubernetes-group-version-kind` and the `fieldValidation` query parameter: what
/// kubectl looks for to decide that the server validates fields itself, so that
/// `kubectl create`/`apply` work without `--validate=false`.
pub fn openapi_v3_group_version(group: &str, version: &str) -> Option<Value> {
    if !has_group_version(group, version) {
        return None;
    }
    let mut paths = serde_json::Map::new();
    let query = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    for rt in ALL
        .iter()
        .filter(|rt| rt.group == group && rt.version == version && !rt.read_only)
    {
        let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
        let patch = json!({
            "operationId": format!("patch{}", rt.kind),
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
            "parameters": [query("dryRun"), query("fieldManager"), query("fieldValidation"), query("force")],
            "responses": {"200": {"description": "OK"}},
        });
        paths.insert(object_path(rt), json!({"patch": patch}));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
