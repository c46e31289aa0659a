//! The verbs on stored objects: create, update, patch, delete, list. Pure functions of
//! the store; the HTTP layer parses requests and persists and announces the results.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::patch::{self, PatchError};
use crate::resources::{self, ResourceType, NAMESPACES, SERVICES};
use crate::rules;
use crate::selector::Selectors;
use crate::status::{ApiError, Cause};
use crate::store::{name_of, namespace_of, object_key, Store, Write};

/// Now as a `metav1.Time` (`2006-01-02T15:04:05Z`).
pub fn now_time() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A random UUID (version 4 layout).
pub fn new_uid() -> String {
    let mut bytes = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The suffix `generateName` gets: five characters of the apiserver's alphabet.
fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rules::random_below(ALPHABET.len() as u64) as usize] as char)
        .collect()
}

fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = json!({});
    }
    let Value::Object(map) = object else {
        unreachable!("made an object above")
    };
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    match meta {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

fn set_type_meta(rt: &ResourceType, object: &mut Value) {
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), json!(rt.api_version()));
        map.insert("kind".into(), json!(rt.kind));
    }
}

/// A lowercase RFC 1123 subdomain.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn finalizers(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// How a create came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Through the API: status is wiped where the apiserver wipes it.
    Api,
    /// Seeded by a test or a seed file: status is kept as given.
    Seed,
}

/// `POST`: create an object in `namespace` (or the body's namespace when `None`).
pub fn create(
    store: &mut Store,
    rt: &'static ResourceType,
    namespace: Option<&str>,
    body: Value,
    origin: Origin,
) -> Result<Value, ApiError> {
    if rt.read_only {
        return Err(ApiError::method_not_allowed("create"));
    }
    let mut object = body;
    if !object.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request is not a JSON object",
        ));
    }
    set_type_meta(rt, &mut object);
    let meta = metadata_mut(&mut object);
    if rt.namespaced {
        let given = meta
            .get("namespace")
            .and_then(Value::as_str)
            .map(str::to_string);
        let ns = match (namespace, given) {
            (Some(path), Some(body)) if !body.is_empty() && body != path => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            (Some(path), _) => path.to_string(),
            (None, Some(body)) if !body.is_empty() => body,
            (None, _) => "default".to_string(),
        };
        meta.insert("namespace".into(), json!(ns));
    } else {
        meta.remove("namespace");
    }
    let mut name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if name.is_empty() {
        match meta.get("generateName").and_then(Value::as_str) {
            Some(prefix) if !prefix.is_empty() => {
                name = format!("{prefix}{}", name_suffix());
                meta.insert("name".into(), json!(name));
            }
            _ => {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    vec![Cause::required(
                        "metadata.name",
                        "name or generateName is required",
                    )],
                ))
            }
        }
    }
    if !valid_name(&name) {
        return Err(ApiError::invalid(
            rt,
            &name,
            vec![Cause::invalid(
                "metadata.name",
                &json!(name),
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            )],
        ));
    }
    let ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    meta.insert("uid".into(), json!(new_uid()));
    meta.insert("creationTimestamp".into(), json!(now_time()));
    meta.insert("generation".into(), json!(1));
    for key in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
        "managedFields",
    ] {
        meta.remove(key);
    }
    if let Some(ns) = &ns {
        if store.get(&NAMESPACES, None, ns).is_none() {
            return Err(ApiError::not_found(&NAMESPACES, ns));
        }
    }
    if store.get(rt, ns.as_deref(), &name).is_some() {
        return Err(ApiError::already_exists(rt, &name));
    }
    if origin == Origin::Api && rt.key() == SERVICES.key() {
        if let Some(map) = object.as_object_mut() {
            map.insert("status".into(), json!({"loadBalancer": {}}));
        }
    }
    rules::prepare(rt, store, None, &mut object, false)
        .map_err(|causes| ApiError::invalid(rt, &name, causes))?;
    Ok(store.commit(rt, Write::Put(object)))
}

/// `PUT`: replace an object (`status_write`: through `/status`).
pub fn update(
    store: &mut Store,
    rt: &'static ResourceType,
    namespace: Option<&str>,
    name: &str,
    body: Value,
    status_write: bool,
) -> Result<Value, ApiError> {
    if rt.read_only {
        return Err(ApiError::method_not_allowed("update"));
    }
    let old = store
        .get(rt, namespace, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request is not a JSON object",
        ));
    }
    check_identity(rt, namespace, name, &body)?;
    finish(store, rt, &old, body, status_write)
}

fn check_identity(
    rt: &ResourceType,
    namespace: Option<&str>,
    name: &str,
    object: &Value,
) -> Result<(), ApiError> {
    let body_name = name_of(object);
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if rt.namespaced {
        if let (Some(body_ns), Some(ns)) = (namespace_of(object), namespace) {
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
    }
    Ok(())
}

/// Without metadata and status: what `generation` counts changes of.
fn spec_part(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    copy
}

/// The shared tail of update and patch: keep what the client may not change, apply the
/// kind's rules, store unless nothing changed, finish a deletion whose finalizers are gone.
fn finish(
    store: &mut Store,
    rt: &'static ResourceType,
    old: &Value,
    body: Value,
    status_write: bool,
) -> Result<Value, ApiError> {
    let name = name_of(old);
    let given_rv = body
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let old_rv = old
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !given_rv.is_empty() && given_rv != old_rv {
        return Err(ApiError::conflict(rt, &name));
    }
    let mut new = if status_write {
        let mut merged = old.clone();
        if let Some(map) = merged.as_object_mut() {
            match body.get("status") {
                Some(status) => map.insert("status".into(), status.clone()),
                None => map.remove("status"),
            };
        }
        merged
    } else {
        let mut merged = body;
        if rt.status {
            if let Some(map) = merged.as_object_mut() {
                match old.get("status") {
                    Some(status) => map.insert("status".into(), status.clone()),
                    None => map.remove("status"),
                };
            }
        }
        merged
    };
    set_type_meta(rt, &mut new);
    let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let meta = metadata_mut(&mut new);
    for key in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "resourceVersion",
    ] {
        match old_meta.get(key) {
            Some(v) => meta.insert(key.into(), v.clone()),
            None => meta.remove(key),
        };
    }
    meta.remove("selfLink");
    if meta
        .get("finalizers")
        .is_some_and(|f| f.as_array().is_some_and(Vec::is_empty))
    {
        meta.remove("finalizers");
    }
    if old.pointer("/metadata/deletionTimestamp").is_some() {
        let before = finalizers(old);
        let added: Vec<String> = finalizers(&new)
            .into_iter()
            .filter(|f| !before.contains(f))
            .collect();
        if !added.is_empty() {
            let list: Vec<String> = added.iter().map(|f| format!("\"{f}\"")).collect();
            return Err(ApiError::invalid(
                rt,
                &name,
                vec![Cause::forbidden(
                    "metadata.finalizers",
                    &format!(
                        "no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                        list.join(", ")
                    ),
                )],
            ));
        }
    }
    rules::prepare(rt, store, Some(old), &mut new, status_write)
        .map_err(|causes| ApiError::invalid(rt, &name, causes))?;
    if spec_part(&new) != spec_part(old) {
        let generation = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        metadata_mut(&mut new).insert("generation".into(), json!(generation + 1));
    }
    if new == *old {
        return Ok(old.clone());
    }
    if new.pointer("/metadata/deletionTimestamp").is_some() && finalizers(&new).is_empty() {
        return Ok(store.commit(rt, Write::Delete(new)));
    }
    Ok(store.commit(rt, Write::Put(new)))
}

/// The patch formats of `PATCH`, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/json-patch+json`.
    Json,
    /// `application/apply-patch+yaml`.
    Apply,
}

impl PatchType {
    /// The patch type of a `Content-Type` header, if supported.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// Options of a `PATCH` request.
#[derive(Debug, Clone, Default)]
pub struct PatchOptions {
    /// `fieldManager`.
    pub field_manager: Option<String>,
    /// Whether the patch goes to the `/status` subresource.
    pub status_write: bool,
}

/// `PATCH`: apply a patch to an object (`status_write`: through `/status`).
pub fn patch(
    store: &mut Store,
    rt: &'static ResourceType,
    namespace: Option<&str>,
    name: &str,
    kind: PatchType,
    body: &[u8],
    options: &PatchOptions,
) -> Result<Value, ApiError> {
    let status_write = options.status_write;
    if rt.read_only {
        return Err(ApiError::method_not_allowed("patch"));
    }
    let old = store.get(rt, namespace, name).cloned();
    if kind == PatchType::Apply {
        if options
            .field_manager
            .as_deref()
            .unwrap_or_default()
            .is_empty()
        {
            return Err(ApiError::invalid_options(
                "PatchOptions.meta.k8s.io",
                Cause::required("fieldManager", "is required for apply patch"),
            ));
        }
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("the apply patch is not UTF-8"))?;
        let applied: Value = serde_saphyr::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
        check_identity(rt, namespace, name, &applied)?;
        let Some(old) = old else {
            if status_write {
                return Err(ApiError::not_found(rt, name));
            }
            let mut fresh = applied;
            metadata_mut(&mut fresh).insert("name".into(), json!(name));
            return create(store, rt, namespace, fresh, Origin::Api);
        };
        let mut merged = old.clone();
        patch::apply_merge(&mut merged, &applied);
        return finish(store, rt, &old, merged, status_write);
    }
    let old = old.ok_or_else(|| ApiError::not_found(rt, name))?;
    let document: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let mut patched = old.clone();
    let result = match kind {
        PatchType::Merge => {
            patch::merge_patch(&mut patched, &document);
            Ok(())
        }
        PatchType::Strategic => patch::strategic_merge_patch(&mut patched, &document),
        PatchType::Json => patch::json_patch(&mut patched, &document),
        PatchType::Apply => Ok(()),
    };
    match result {
        Ok(()) => {}
        Err(PatchError::Malformed(m)) => return Err(ApiError::bad_request(m)),
        Err(PatchError::Failed(m)) => {
            let mut err = ApiError::invalid(rt, name, Vec::new());
            err.message = m;
            return Err(err);
        }
    }
    check_identity(rt, namespace, name, &patched)?;
    finish(store, rt, &old, patched, status_write)
}

/// `DELETE`: remove an object, or start its deletion when it has finalizers.
pub fn delete(
    store: &mut Store,
    rt: &'static ResourceType,
    namespace: Option<&str>,
    name: &str,
    options: &Value,
) -> Result<Value, ApiError> {
    if rt.read_only {
        return Err(ApiError::method_not_allowed("delete"));
    }
    let old = store
        .get(rt, namespace, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    if let Some(uid) = options
        .pointer("/preconditions/uid")
        .and_then(Value::as_str)
    {
        let actual = old
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if uid != actual {
            return Err(ApiError::conflict_with(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                ),
            ));
        }
    }
    if let Some(rv) = options
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
    {
        let actual = old
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if rv != actual {
            return Err(ApiError::conflict_with(
                rt,
                name,
                &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual}"),
            ));
        }
    }
    if !finalizers(&old).is_empty() {
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(old);
        }
        let mut marked = old.clone();
        let meta = metadata_mut(&mut marked);
        meta.insert("deletionTimestamp".into(), json!(now_time()));
        meta.insert("deletionGracePeriodSeconds".into(), json!(0));
        return Ok(store.commit(rt, Write::Put(marked)));
    }
    if rt.key() == NAMESPACES.key() {
        for inner in resources::ALL
            .iter()
            .filter(|r| r.namespaced && !r.read_only)
        {
            let doomed: Vec<Value> = store
                .list(inner, Some(name), None)
                .map(|(_, v)| v.clone())
                .collect();
            for object in doomed {
                store.commit(inner, Write::Delete(object));
            }
        }
    }
    Ok(store.commit(rt, Write::Delete(old)))
}

/// Parameters of a list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Label and field selectors.
    pub selectors: Selectors,
    /// `limit` (0: no limit).
    pub limit: usize,
    /// `continue`.
    pub continue_token: Option<String>,
}

fn encode_continue(rv: u64, epoch: u64, after: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "epoch": epoch, "start": after});
    base64::engine::general_purpose::STANDARD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Option<(u64, u64, String)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    Some((
        value.get("rv")?.as_u64()?,
        value.get("epoch")?.as_u64()?,
        value.get("start")?.as_str()?.to_string(),
    ))
}

/// `GET` of a collection.
pub fn list(
    store: &Store,
    rt: &'static ResourceType,
    namespace: Option<&str>,
    options: &ListOptions,
) -> Result<Value, ApiError> {
    let (rv, after) = match &options.continue_token {
        Some(token) if !token.is_empty() => {
            let (rv, epoch, after) = decode_continue(token)
                .ok_or_else(|| ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))?;
            if rv < store.floor() || epoch != store.epoch() {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                ));
            }
            (rv, Some(after))
        }
        _ => (store.counter(), None),
    };
    let mut matching = store
        .list(rt, namespace, after.as_deref())
        .filter(|(_, v)| options.selectors.matches(v));
    let mut items = Vec::new();
    let mut last_key = None;
    for (key, value) in matching.by_ref() {
        items.push(value.clone());
        last_key = Some(key.clone());
        if options.limit > 0 && items.len() == options.limit {
            break;
        }
    }
    let remaining = matching.count();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if remaining > 0 {
        if let (Some(meta), Some(key)) = (metadata.as_object_mut(), last_key) {
            meta.insert(
                "continue".into(),
                json!(encode_continue(rv, store.epoch(), &key)),
            );
            meta.insert("remainingItemCount".into(), json!(remaining));
        }
    }
    Ok(json!({
        "apiVersion": rt.api_version(),
        "kind": format!("{}List", rt.kind),
        "metadata": metadata,
        "items": items,
    }))
}

/// The key of an object as [`Store::list`] orders them.
pub fn key_of(rt: &ResourceType, object: &Value) -> String {
    object_key(rt, namespace_of(object).as_deref(), &name_of(object))
}
