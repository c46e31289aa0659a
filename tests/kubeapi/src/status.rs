//! `kind: Status` failure bodies, as the apiserver writes them
//! (`k8s.io/apimachinery/pkg/api/errors`).

use serde_json::{json, Value};

use crate::resources::ResourceType;

/// One entry of `details.causes` of a 422 Invalid answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueForbidden`, ...
    pub reason: &'static str,
    /// The field path, e.g. `spec.ports[0].nodePort`.
    pub field: String,
    /// The message of this cause alone, e.g. `Invalid value: 80: ...`.
    pub message: String,
}

impl Cause {
    /// `field: Invalid value: VALUE: detail`.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {}: {detail}", show_value(value)),
        }
    }

    /// `field: Required value[: detail]`.
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message,
        }
    }

    /// `field: Forbidden: detail`.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Cause {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }

    /// `field: Unsupported value: VALUE: supported values: ...`.
    pub fn unsupported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        Cause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                show_value(value),
                list.join(", ")
            ),
        }
    }

    /// `field: Too long: may not be more than N bytes`.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Cause {
            reason: "FieldValueTooLong",
            field: field.into(),
            message: format!("Too long: may not be more than {max} bytes"),
        }
    }
}

fn show_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("\"{s}\""),
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

/// `details` of a `Status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    /// `details.name`.
    pub name: Option<String>,
    /// `details.group`.
    pub group: Option<String>,
    /// `details.kind`.
    pub kind: Option<String>,
    /// `details.causes`.
    pub causes: Vec<Cause>,
}

/// A failed API request: HTTP code plus the `Status` body that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code, also `status.code`.
    pub code: u16,
    /// `status.reason`, e.g. `NotFound`.
    pub reason: &'static str,
    /// `status.message`.
    pub message: String,
    /// `details`.
    pub details: Box<Details>,
}

impl ApiError {
    fn plain(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: Box::default(),
        }
    }

    fn about(mut self, rt: &ResourceType, name: &str) -> Self {
        self.details.name = Some(name.to_string());
        if !rt.group.is_empty() {
            self.details.group = Some(rt.group.to_string());
        }
        self.details.kind = Some(rt.plural.to_string());
        self
    }

    /// 404 `services "NAME" not found`.
    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::plain(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", rt.qualified()),
        )
        .about(rt, name)
    }

    /// 409 `services "NAME" already exists`.
    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::plain(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", rt.qualified()),
        )
        .about(rt, name)
    }

    /// 409 Conflict of optimistic concurrency.
    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::plain(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                rt.qualified()
            ),
        )
        .about(rt, name)
    }

    /// 409 Conflict with a message of its own (failed preconditions).
    pub fn conflict_with(rt: &ResourceType, name: &str, detail: &str) -> Self {
        Self::plain(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {detail}",
                rt.qualified()
            ),
        )
        .about(rt, name)
    }

    /// 422 `Kind.group "NAME" is invalid: cause; cause`.
    pub fn invalid(rt: &ResourceType, name: &str, causes: Vec<Cause>) -> Self {
        let listed: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let kind = if rt.group.is_empty() {
            rt.kind.to_string()
        } else {
            format!("{}.{}", rt.kind, rt.group)
        };
        let message = if listed.len() == 1 {
            format!("{kind} \"{name}\" is invalid: {}", listed.join(""))
        } else {
            format!("{kind} \"{name}\" is invalid: [{}]", listed.join(", "))
        };
        let mut err = Self::plain(422, "Invalid", message);
        err.details.name = Some(name.to_string());
        if !rt.group.is_empty() {
            err.details.group = Some(rt.group.to_string());
        }
        err.details.kind = Some(rt.kind.to_string());
        err.details.causes = causes;
        err
    }

    /// 422 about the request options rather than the object
    /// (`PatchOptions.meta.k8s.io "" is invalid: ...`).
    pub fn invalid_options(kind: &str, cause: Cause) -> Self {
        let message = format!("{kind} \"\" is invalid: {}: {}", cause.field, cause.message);
        let mut err = Self::plain(422, "Invalid", message);
        err.details.name = Some(String::new());
        err.details.group = Some("meta.k8s.io".to_string());
        err.details.kind = Some(kind.split('.').next().unwrap_or(kind).to_string());
        err.details.causes = vec![cause];
        err
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::plain(400, "BadRequest", message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::plain(401, "Unauthorized", "Unauthorized")
    }

    /// 404 for a path that names no resource.
    pub fn no_route() -> Self {
        Self::plain(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(what: &str) -> Self {
        Self::plain(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({what})"),
        )
    }

    /// 406 NotAcceptable.
    pub fn not_acceptable(accept: &str) -> Self {
        Self::plain(
            406,
            "NotAcceptable",
            format!("only the following media types are accepted: application/json, not {accept}"),
        )
    }

    /// 410 Expired (a `continue` token or a watch resourceVersion too old).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::plain(410, "Expired", message)
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::plain(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type})"),
        )
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::plain(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    /// The `Status` object.
    pub fn to_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        let d = &self.details;
        if d.name.is_some() || d.kind.is_some() || !d.causes.is_empty() {
            let mut details = serde_json::Map::new();
            if let Some(name) = &d.name {
                details.insert("name".into(), Value::String(name.clone()));
            }
            if let Some(group) = &d.group {
                details.insert("group".into(), Value::String(group.clone()));
            }
            if let Some(kind) = &d.kind {
                details.insert("kind".into(), Value::String(kind.clone()));
            }
            if !d.causes.is_empty() {
                let causes: Vec<Value> = d
                    .causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                details.insert("causes".into(), Value::Array(causes));
            }
            if let Some(obj) = status.as_object_mut() {
                obj.insert("details".into(), Value::Object(details));
            }
        }
        status
    }
}
