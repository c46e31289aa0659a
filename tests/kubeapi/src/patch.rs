//! The four patch formats of `PATCH`: JSON merge patch (RFC 7386), strategic merge
//! patch (a merge patch with merge keys for the few lists of the served kinds that have
//! them), JSON patch (RFC 6902) and server-side apply (simplified to a merge of the
//! fields given).

use serde_json::{Map, Value};

/// A patch that cannot be applied; the handler answers 422 (JSON patch `test`) or
/// 400 (malformed patch).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document is not of the expected shape.
    #[error("{0}")]
    Malformed(String),
    /// A JSON patch operation failed (missing path, failed `test`).
    #[error("{0}")]
    Failed(String),
}

/// RFC 7386: objects merge, `null` deletes, everything else (lists included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target_map) = target {
        for (key, value) in patch_map {
            if value.is_null() {
                target_map.remove(key);
            } else {
                let entry = target_map.entry(key.clone()).or_insert(Value::Null);
                merge_patch(entry, value);
            }
        }
    }
}

/// Lists merged by a key under strategic merge patch, by field path with list indices
/// dropped; every other list is replaced whole (the `atomic` lists of the served kinds,
/// e.g. `status.loadBalancer.ingress`).
fn merge_key(path: &str) -> Option<&'static str> {
    match path {
        "spec.ports" => Some("port"),
        "metadata.ownerReferences" => Some("uid"),
        "status.conditions" => Some("type"),
        "status.addresses" => Some("type"),
        "spec.taints" => Some("key"),
        _ => None,
    }
}

/// Lists of scalars merged as sets under strategic merge patch.
fn is_scalar_set(path: &str) -> bool {
    matches!(path, "metadata.finalizers")
}

/// Strategic merge patch for the served kinds: a merge patch, except that the lists
/// named in [`merge_key`] merge element-wise by their key (`$patch: delete` in an
/// element removes it), `metadata.finalizers` merges as a set, and the directives
/// `$setElementOrder/...`, `$retainKeys` and `$deleteFromPrimitiveList/...` are honoured
/// (the first only to the extent of dropping it).
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    strategic_at(target, patch, "")
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn strategic_at(target: &mut Value, patch: &Value, path: &str) -> Result<(), PatchError> {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        if let Value::Object(m) = &mut replacement {
            m.remove("$patch");
        }
        *target = replacement;
        return Ok(());
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target_map) = target else {
        return Ok(());
    };
    if let Some(Value::Array(retain)) = patch_map.get("$retainKeys") {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        target_map.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, value) in patch_map {
        if key.starts_with("$setElementOrder/") || key == "$retainKeys" || key == "$patch" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) =
                (target_map.get_mut(field), value)
            {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        let field_path = join(path, key);
        if value.is_null() {
            target_map.remove(key);
            continue;
        }
        match (value, merge_key(&field_path)) {
            (Value::Array(items), Some(mkey)) => {
                let entry = target_map
                    .entry(key.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if !entry.is_array() {
                    *entry = Value::Array(Vec::new());
                }
                if let Value::Array(existing) = entry {
                    merge_keyed_list(existing, items, mkey, &field_path)?;
                }
            }
            (Value::Array(items), None) if is_scalar_set(&field_path) => {
                let entry = target_map
                    .entry(key.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(existing) = entry {
                    for item in items {
                        if !existing.contains(item) {
                            existing.push(item.clone());
                        }
                    }
                } else {
                    *entry = Value::Array(items.clone());
                }
            }
            _ => {
                let entry = target_map.entry(key.clone()).or_insert(Value::Null);
                strategic_at(entry, value, &field_path)?;
            }
        }
    }
    Ok(())
}

fn merge_keyed_list(
    existing: &mut Vec<Value>,
    items: &[Value],
    mkey: &str,
    path: &str,
) -> Result<(), PatchError> {
    for item in items {
        let key_value = item.get(mkey).cloned().ok_or_else(|| {
            PatchError::Malformed(format!(
                "map: {item} does not contain declared merge key: {mkey} ({path})"
            ))
        })?;
        let position = existing
            .iter()
            .position(|e| e.get(mkey) == Some(&key_value));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                existing.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_at(&mut existing[i], item, path)?,
            (None, false) => {
                let mut fresh = Value::Object(Map::new());
                strategic_at(&mut fresh, item, path)?;
                existing.push(fresh);
            }
        }
    }
    Ok(())
}

/// Server-side apply, simplified: objects merge recursively, lists and scalars given
/// replace what is stored; fields not given are kept (no field ownership, no removal of
/// fields a manager stopped applying).
pub fn apply_merge(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (key, value) in a {
                match t.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        apply_merge(existing, value)
                    }
                    _ => {
                        t.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (t, a) => *t = a.clone(),
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn pointer_parts(path: &str) -> Result<Vec<String>, PatchError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| PatchError::Malformed(format!("invalid JSON pointer: {path:?}")))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn parent_of<'a>(
    doc: &'a mut Value,
    parts: &[String],
    path: &str,
) -> Result<&'a mut Value, PatchError> {
    let mut current = doc;
    for part in parts {
        current = match current {
            Value::Object(m) => m.get_mut(part),
            Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| PatchError::Failed(format!("doc is missing path: \"{path}\"")))?;
    }
    Ok(current)
}

fn remove_at(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let parts = pointer_parts(path)?;
    let (last, parents) = parts
        .split_last()
        .ok_or_else(|| PatchError::Failed("cannot remove the whole document".into()))?;
    let parent = parent_of(doc, parents, path)?;
    let missing = || {
        PatchError::Failed(format!(
            "unable to remove nonexistent key: {last}: missing value"
        ))
    };
    match parent {
        Value::Object(m) => m.remove(last).ok_or_else(missing),
        Value::Array(a) => {
            let i = last.parse::<usize>().map_err(|_| missing())?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(missing())
            }
        }
        _ => Err(missing()),
    }
}

fn add_at(doc: &mut Value, path: &str, value: Value, replace: bool) -> Result<(), PatchError> {
    let parts = pointer_parts(path)?;
    let Some((last, parents)) = parts.split_last() else {
        *doc = value;
        return Ok(());
    };
    let parent = parent_of(doc, parents, path)?;
    match parent {
        Value::Object(m) => {
            if replace && !m.contains_key(last) {
                return Err(PatchError::Failed(format!(
                    "replace operation does not apply: doc is missing key: {path}: missing value"
                )));
            }
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" && !replace {
                a.push(value);
                return Ok(());
            }
            let i = last
                .parse::<usize>()
                .map_err(|_| PatchError::Failed(format!("invalid array index in {path}")))?;
            if replace {
                let slot = a
                    .get_mut(i)
                    .ok_or_else(|| PatchError::Failed(format!("index out of range in {path}")))?;
                *slot = value;
            } else if i <= a.len() {
                a.insert(i, value);
            } else {
                return Err(PatchError::Failed(format!("index out of range in {path}")));
            }
            Ok(())
        }
        _ => Err(PatchError::Failed(format!(
            "doc is missing path: \"{path}\""
        ))),
    }
}

/// RFC 6902 JSON patch: `add`, `remove`, `replace`, `move`, `copy`, `test`.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| PatchError::Malformed("a JSON patch must be a list of operations".into()))?;
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or_default();
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| PatchError::Malformed(format!("operation {op} has no path")))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| PatchError::Malformed(format!("operation {op} has no value")))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| PatchError::Malformed(format!("operation {op} has no from")))
        };
        match name {
            "add" => add_at(doc, path, value()?, false)?,
            "replace" => add_at(doc, path, value()?, true)?,
            "remove" => {
                remove_at(doc, path)?;
            }
            "move" => {
                let moved = remove_at(doc, from()?)?;
                add_at(doc, path, moved, false)?;
            }
            "copy" => {
                let source = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| PatchError::Failed(format!("copy from missing path {path}")))?;
                add_at(doc, path, source, false)?;
            }
            "test" => {
                let expected = value()?;
                if doc.pointer(path) != Some(&expected) {
                    return Err(PatchError::Failed(format!(
                        "testing value {path} failed: test failed"
                    )));
                }
            }
            other => return Err(PatchError::Malformed(format!("Unexpected kind: {other}"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386_examples() {
        // RFC 7386 section 3 example.
        let mut doc = json!({"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"}, "tags": ["example", "sample"], "content": "This will be unchanged"});
        let patch = json!({"title": "Hello!", "phoneNumber": "+01-123-456-7890", "author": {"familyName": null}, "tags": ["example"]});
        merge_patch(&mut doc, &patch);
        assert_eq!(
            doc,
            json!({"title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"], "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"})
        );
    }

    #[test]
    fn strategic_merges_ports_by_port_and_replaces_ingress() {
        let mut doc = json!({
            "metadata": {"finalizers": ["a"]},
            "spec": {"ports": [{"port": 80, "protocol": "TCP", "name": "http"}, {"port": 443, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]}}
        });
        let patch = json!({
            "metadata": {"finalizers": ["b"]},
            "spec": {"$setElementOrder/ports": [{"port": 80}, {"port": 443}], "ports": [{"port": 80, "targetPort": 8080}, {"port": 443, "$patch": "delete"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.3"}]}}
        });
        strategic_merge_patch(&mut doc, &patch).unwrap();
        assert_eq!(
            doc,
            json!({
                "metadata": {"finalizers": ["a", "b"]},
                "spec": {"ports": [{"port": 80, "protocol": "TCP", "name": "http", "targetPort": 8080}]},
                "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.3"}]}}
            })
        );
    }

    #[test]
    fn json_patch_rfc6902_ops() {
        let mut doc = json!({"a": {"b": [1, 2]}, "c": "x"});
        let patch = json!([
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "replace", "path": "/c", "value": "y"},
            {"op": "copy", "from": "/c", "path": "/d"},
            {"op": "move", "from": "/d", "path": "/e"},
            {"op": "remove", "path": "/a/b/0"},
            {"op": "test", "path": "/e", "value": "y"},
            {"op": "add", "path": "/f~1g", "value": true}
        ]);
        json_patch(&mut doc, &patch).unwrap();
        assert_eq!(
            doc,
            json!({"a": {"b": [2, 3]}, "c": "y", "e": "y", "f/g": true})
        );
        let failing = json!([{"op": "test", "path": "/c", "value": "z"}]);
        assert!(matches!(
            json_patch(&mut doc, &failing),
            Err(PatchError::Failed(_))
        ));
    }
}
