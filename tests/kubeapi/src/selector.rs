//! Label selectors (`k8s.io/apimachinery/pkg/labels`) and field selectors
//! (`k8s.io/apimachinery/pkg/fields`) as list and watch requests carry them.

use serde_json::Value;

use crate::status::ApiError;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; empty selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelRequirement>);

/// Split at commas outside parentheses.
fn split_top(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for c in text.chars() {
        match c {
            '(' => {
                depth += 1;
                current.push(c);
            }
            ')' => {
                depth = depth.saturating_sub(1);
                current.push(c);
            }
            ',' if depth == 0 => parts.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn bad_label(term: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: found '{term}', expected: label selector requirement"
    ))
}

impl LabelSelector {
    /// Parse `labelSelector=...`.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for term in split_top(text) {
            reqs.push(Self::parse_term(&term)?);
        }
        Ok(LabelSelector(reqs))
    }

    fn parse_term(term: &str) -> Result<LabelRequirement, ApiError> {
        if let Some(key) = term.strip_prefix('!') {
            let key = key.trim();
            if key.is_empty() {
                return Err(bad_label(term));
            }
            return Ok(LabelRequirement::NotExists(key.to_string()));
        }
        if let Some(open) = term.find('(') {
            let head: Vec<&str> = term[..open].split_whitespace().collect();
            let close = term.rfind(')').ok_or_else(|| bad_label(term))?;
            if close < open || head.len() != 2 {
                return Err(bad_label(term));
            }
            let values: Vec<String> = term[open + 1..close]
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            let key = head[0].to_string();
            return match head[1] {
                "in" => Ok(LabelRequirement::In(key, values)),
                "notin" => Ok(LabelRequirement::NotIn(key, values)),
                _ => Err(bad_label(term)),
            };
        }
        if let Some((k, v)) = term.split_once("!=") {
            return Ok(LabelRequirement::NotEquals(
                k.trim().to_string(),
                v.trim().to_string(),
            ));
        }
        if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            return Ok(LabelRequirement::Equals(
                k.trim().to_string(),
                v.trim().to_string(),
            ));
        }
        if term.contains(char::is_whitespace) {
            return Err(bad_label(term));
        }
        Ok(LabelRequirement::Exists(term.to_string()))
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get =
            |key: &str| -> Option<&str> { labels.and_then(|l| l.get(key)).and_then(Value::as_str) };
        self.0.iter().all(|req| match req {
            LabelRequirement::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelRequirement::NotIn(k, vs) => get(k).is_none_or(|l| !vs.iter().any(|v| v == l)),
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed field selector; empty selects everything.
///
/// Any dotted field path of the object may be used (`metadata.name`, `spec.type`,
/// `involvedObject.uid`, ...); a missing field compares as the empty string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parse `fieldSelector=...`.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for term in split_top(text) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                )));
            };
            terms.push((field.trim().to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    /// Whether the object's fields satisfy every term.
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let mut current = Some(object);
            for part in field.split('.') {
                current = current.and_then(|v| v.get(part));
            }
            let actual = match current {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

/// Both selectors of a request.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl Selectors {
    /// Whether an object passes both.
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}, "spec": {"type": "LoadBalancer"}})
    }

    #[test]
    fn label_selector_operators() {
        let o = svc(json!({"app": "web", "tier": "front"}));
        let yes = [
            "app=web",
            "app==web",
            "app!=db",
            "app in (web, db)",
            "app notin (db)",
            "tier",
            "!missing",
            "app=web,tier in (front,back)",
            "",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(&o), "{s}");
        }
        let no = [
            "app=db",
            "app!=web",
            "app in (db)",
            "app notin (web)",
            "missing",
            "!app",
        ];
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(&o), "{s}");
        }
    }

    #[test]
    fn field_selector_paths() {
        let o = svc(json!({}));
        for s in [
            "metadata.name=a",
            "metadata.namespace==ns",
            "spec.type=LoadBalancer",
            "spec.clusterIP=",
        ] {
            assert!(FieldSelector::parse(s).unwrap().matches(&o), "{s}");
        }
        for s in ["metadata.name=b", "spec.type!=LoadBalancer"] {
            assert!(!FieldSelector::parse(s).unwrap().matches(&o), "{s}");
        }
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
