//! Object storage: every object of every kind as JSON, one resourceVersion counter
//! across all kinds, and a bounded history of changes for watches.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{json, Value};

use crate::resources::{self, ResourceType, CORE_EVENTS, EVENTS, SERVICES};

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl ChangeKind {
    /// The watch event `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
}

/// One entry of the change history.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion the change was given.
    pub rv: u64,
    /// [`ResourceType::key`] of the object's resource.
    pub resource: &'static str,
    /// What happened.
    pub kind: ChangeKind,
    /// The object after the change (for a deletion: its last state, at `rv`).
    pub object: Value,
    /// The object before the change.
    pub previous: Option<Value>,
}

/// A write to commit.
#[derive(Debug)]
pub enum Write {
    /// Create or replace the object.
    Put(Value),
    /// Remove the object; the value is its last state, sent with the DELETED event.
    Delete(Value),
}

/// The key of an object within its resource: `namespace/name` or `name`.
pub fn object_key(rt: &ResourceType, namespace: Option<&str>, name: &str) -> String {
    if rt.namespaced {
        format!("{}/{name}", namespace.unwrap_or_default())
    } else {
        name.to_string()
    }
}

/// The node ports and cluster IPs the stored Services hold, with how many
/// Services hold each (kept with every write, so that a Service write does
/// not read every other Service).
#[derive(Debug, Default)]
pub struct Allocations {
    ports: BTreeMap<u64, usize>,
    ips: BTreeMap<String, usize>,
}

impl Allocations {
    /// How many stored Services hold node port `port`.
    pub fn port(&self, port: u64) -> usize {
        self.ports.get(&port).copied().unwrap_or(0)
    }

    /// How many stored Services hold cluster IP `ip`.
    pub fn ip(&self, ip: &str) -> usize {
        self.ips.get(ip).copied().unwrap_or(0)
    }

    fn add(&mut self, service: &Value) {
        let (ports, ip) = holdings(service);
        for p in ports {
            *self.ports.entry(p).or_insert(0) += 1;
        }
        if let Some(ip) = ip {
            *self.ips.entry(ip.to_string()).or_insert(0) += 1;
        }
    }

    fn remove(&mut self, service: &Value) {
        let (ports, ip) = holdings(service);
        for p in ports {
            if let Some(n) = self.ports.get_mut(&p) {
                *n -= 1;
                if *n == 0 {
                    self.ports.remove(&p);
                }
            }
        }
        if let Some(ip) = ip {
            if let Some(n) = self.ips.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    self.ips.remove(ip);
                }
            }
        }
    }
}

/// The node ports (those of `spec.ports` and `spec.healthCheckNodePort`) and
/// the cluster IP a Service holds.
pub fn holdings(service: &Value) -> (Vec<u64>, Option<&str>) {
    let mut ports: Vec<u64> = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|p| p.get("nodePort"))
                .filter_map(Value::as_u64)
                .collect()
        })
        .unwrap_or_default();
    if let Some(p) = service
        .pointer("/spec/healthCheckNodePort")
        .and_then(Value::as_u64)
    {
        ports.push(p);
    }
    let ip = service.pointer("/spec/clusterIP").and_then(Value::as_str);
    (ports, ip)
}

/// All objects, the counter and the change history.
#[derive(Debug)]
pub struct Store {
    counter: u64,
    objects: BTreeMap<&'static str, BTreeMap<String, Value>>,
    allocations: Allocations,
    history: VecDeque<Change>,
    history_cap: usize,
    floor: u64,
    epoch: u64,
}

impl Store {
    /// An empty store keeping at most `history_cap` changes.
    pub fn new(history_cap: usize) -> Self {
        Store {
            counter: 0,
            objects: BTreeMap::new(),
            allocations: Allocations::default(),
            history: VecDeque::new(),
            history_cap: history_cap.max(1),
            floor: 0,
            epoch: 0,
        }
    }

    /// The node ports and cluster IPs the stored Services hold.
    pub fn allocations(&self) -> &Allocations {
        &self.allocations
    }

    /// The current resourceVersion.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Every change after `floor` is still in the history; a watch from an older
    /// resourceVersion has expired.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Forget the history: every watch resumed from before now gets 410 Expired.
    pub fn expire_history(&mut self) {
        self.history.clear();
        self.floor = self.counter;
        self.epoch += 1;
    }

    /// How many times the history was expired: `continue` tokens of an earlier epoch
    /// have expired.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// One object.
    pub fn get(&self, rt: &ResourceType, namespace: Option<&str>, name: &str) -> Option<&Value> {
        self.objects
            .get(rt.key())
            .and_then(|m| m.get(&object_key(rt, namespace, name)))
    }

    /// Objects of a resource, in key order, optionally of one namespace, starting after
    /// `after` (a key).
    pub fn list<'a>(
        &'a self,
        rt: &ResourceType,
        namespace: Option<&'a str>,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a String, &'a Value)> + 'a {
        let prefix = namespace.map(|ns| format!("{ns}/"));
        self.objects
            .get(rt.key())
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(move |(k, _)| after.is_none_or(|a| k.as_str() > a))
            .filter(move |(k, _)| prefix.as_ref().is_none_or(|p| k.starts_with(p.as_str())))
    }

    /// Every object of a resource.
    pub fn all(&self, rt: &ResourceType) -> impl Iterator<Item = &Value> {
        self.objects
            .get(rt.key())
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// Changes after `rv`, oldest first.
    pub fn changes_since(&self, rv: u64) -> impl Iterator<Item = &Change> {
        self.history.iter().filter(move |c| c.rv > rv)
    }

    /// Commit a write: bump the counter, stamp the object, record the change. Returns
    /// the stored (or last) object.
    pub fn commit(&mut self, rt: &ResourceType, write: Write) -> Value {
        self.counter += 1;
        let rv = self.counter;
        let value = self.commit_at(rt, write, rv);
        if rt.key() == EVENTS.key() {
            let core = match &value {
                v if self
                    .get(rt, namespace_of(v).as_deref(), &name_of(v))
                    .is_some() =>
                {
                    Write::Put(core_event(v))
                }
                v => Write::Delete(core_event(v)),
            };
            self.commit_at(&CORE_EVENTS, core, rv);
        }
        value
    }

    fn commit_at(&mut self, rt: &ResourceType, write: Write, rv: u64) -> Value {
        let (mut object, deleting) = match write {
            Write::Put(v) => (v, false),
            Write::Delete(v) => (v, true),
        };
        set_rv(&mut object, rv);
        let key = object_key(rt, namespace_of(&object).as_deref(), &name_of(&object));
        let map = self.objects.entry(rt.key()).or_default();
        let previous = if deleting {
            map.remove(&key)
        } else {
            map.insert(key, object.clone())
        };
        if rt.key() == SERVICES.key() {
            if let Some(p) = &previous {
                self.allocations.remove(p);
            }
            if !deleting {
                self.allocations.add(&object);
            }
        }
        let kind = match (&previous, deleting) {
            (_, true) => ChangeKind::Deleted,
            (None, false) => ChangeKind::Added,
            (Some(_), false) => ChangeKind::Modified,
        };
        self.history.push_back(Change {
            rv,
            resource: rt.key(),
            kind,
            object: object.clone(),
            previous,
        });
        while self.history.len() > self.history_cap {
            if let Some(dropped) = self.history.pop_front() {
                self.floor = self.floor.max(dropped.rv);
            }
        }
        // Changes sharing one resourceVersion must not be split by trimming.
        while self.history.front().is_some_and(|c| c.rv <= self.floor) {
            self.history.pop_front();
        }
        object
    }

    /// Insert an object as it is (loading saved state), without a change entry.
    fn load_object(&mut self, rt: &ResourceType, object: Value) {
        let key = object_key(rt, namespace_of(&object).as_deref(), &name_of(&object));
        if rt.key() == SERVICES.key() {
            self.allocations.add(&object);
        }
        if let Some(replaced) = self
            .objects
            .entry(rt.key())
            .or_default()
            .insert(key, object)
        {
            if rt.key() == SERVICES.key() {
                self.allocations.remove(&replaced);
            }
        }
    }

    /// The saved form: counter and every stored object (not derived views).
    pub fn to_saved(&self) -> Value {
        let objects: Vec<&Value> = resources::ALL
            .iter()
            .filter(|rt| !rt.read_only)
            .flat_map(|rt| self.all(rt))
            .collect();
        json!({"resourceVersion": self.counter.to_string(), "objects": objects})
    }

    /// Restore from [`Store::to_saved`]: the counter continues from the saved one.
    pub fn load_saved(&mut self, saved: &Value) -> Result<(), String> {
        let counter = saved
            .get("resourceVersion")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or("no resourceVersion")?;
        let objects = saved
            .get("objects")
            .and_then(Value::as_array)
            .ok_or("no objects")?;
        for object in objects {
            let (api_version, kind) = resources::api_version_and_kind(object);
            let rt = resources::by_kind(api_version, kind)
                .ok_or_else(|| format!("unknown kind {api_version}/{kind}"))?;
            if rt.key() == EVENTS.key() {
                self.load_object(&CORE_EVENTS, core_event(object));
            }
            self.load_object(rt, object.clone());
        }
        self.counter = self.counter.max(counter);
        self.floor = self.counter;
        self.history.clear();
        Ok(())
    }
}

/// `metadata.name`.
pub fn name_of(object: &Value) -> String {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// `metadata.namespace`.
pub fn namespace_of(object: &Value) -> Option<String> {
    object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Set `metadata.resourceVersion`.
pub fn set_rv(object: &mut Value, rv: u64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

/// A MicroTime (`...05.000000Z`) cut to a Time (`...05Z`).
fn to_seconds(time: &Value) -> Value {
    match time.as_str() {
        Some(s) if s.len() >= 19 => Value::String(format!("{}Z", &s[..19])),
        _ => Value::Null,
    }
}

/// The core/v1 view of an events.k8s.io/v1 Event (the apiserver's own conversion:
/// regarding -> involvedObject, note -> message, series.count -> count, ...).
pub fn core_event(event: &Value) -> Value {
    let get = |p: &str| event.pointer(p).cloned().unwrap_or(Value::Null);
    let event_time = get("/eventTime");
    let first = match get("/deprecatedFirstTimestamp") {
        Value::Null => to_seconds(&event_time),
        v => v,
    };
    let last = match (
        get("/series/lastObservedTime"),
        get("/deprecatedLastTimestamp"),
    ) {
        (Value::Null, Value::Null) => first.clone(),
        (Value::Null, v) => v,
        (v, _) => to_seconds(&v),
    };
    let count = match (get("/series/count"), get("/deprecatedCount")) {
        (Value::Null, Value::Null) => json!(1),
        (Value::Null, v) => v,
        (v, _) => v,
    };
    let source = match get("/deprecatedSource") {
        Value::Null => json!({"component": get("/reportingController")}),
        v => v,
    };
    let mut core = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": get("/metadata"),
        "involvedObject": get("/regarding"),
        "reason": get("/reason"),
        "message": get("/note"),
        "source": source,
        "firstTimestamp": first,
        "lastTimestamp": last,
        "count": count,
        "type": get("/type"),
        "eventTime": event_time,
        "series": get("/series"),
        "action": get("/action"),
        "related": get("/related"),
        "reportingComponent": get("/reportingController"),
        "reportingInstance": get("/reportingInstance"),
    });
    if let Some(map) = core.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    core
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::SERVICES;

    fn svc(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}})
    }

    #[test]
    fn one_counter_and_bounded_history() {
        let mut store = Store::new(2);
        store.commit(&SERVICES, Write::Put(svc("a")));
        store.commit(&SERVICES, Write::Put(svc("b")));
        store.commit(&SERVICES, Write::Put(svc("a")));
        assert_eq!(store.counter(), 3);
        assert_eq!(store.floor(), 1);
        let kinds: Vec<_> = store.changes_since(1).map(|c| (c.rv, c.kind)).collect();
        assert_eq!(
            kinds,
            vec![(2, ChangeKind::Added), (3, ChangeKind::Modified)]
        );
        let stored = store.get(&SERVICES, Some("default"), "a").unwrap();
        assert_eq!(stored.pointer("/metadata/resourceVersion").unwrap(), "3");
    }

    #[test]
    fn allocations_follow_every_service_write() {
        let with = |name: &str, port: u64, ip: &str| {
            let mut v = svc(name);
            v["spec"] = json!({"clusterIP": ip, "ports": [{"port": 80, "nodePort": port}]});
            v
        };
        let mut store = Store::new(10);
        store.commit(&SERVICES, Write::Put(with("a", 30001, "10.96.0.10")));
        store.commit(&SERVICES, Write::Put(with("b", 30001, "10.96.0.11")));
        let a = store.allocations();
        assert_eq!(
            (a.port(30001), a.ip("10.96.0.10"), a.ip("10.96.0.11")),
            (2, 1, 1)
        );
        store.commit(&SERVICES, Write::Put(with("a", 30002, "10.96.0.10")));
        let a = store.allocations();
        assert_eq!(
            (a.port(30001), a.port(30002), a.ip("10.96.0.10")),
            (1, 1, 1)
        );
        store.commit(&SERVICES, Write::Delete(with("b", 30001, "10.96.0.11")));
        let a = store.allocations();
        assert_eq!((a.port(30001), a.ip("10.96.0.11")), (0, 0));
        // Loaded from a saved state: the same counts.
        let mut loaded = Store::new(10);
        loaded.load_saved(&store.to_saved()).unwrap();
        let a = loaded.allocations();
        assert_eq!(
            (a.port(30002), a.ip("10.96.0.10"), a.port(30001)),
            (1, 1, 0)
        );
    }

    #[test]
    fn events_have_a_core_view() {
        let mut store = Store::new(10);
        let ev = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "default"},
            "eventTime": "2025-01-02T03:04:05.123456Z",
            "regarding": {"kind": "Service", "name": "web", "namespace": "default"},
            "note": "hello", "reason": "Ensured", "reportingController": "director", "type": "Normal",
            "series": {"count": 3, "lastObservedTime": "2025-01-02T03:05:00.000000Z"}
        });
        store.commit(&EVENTS, Write::Put(ev));
        let core = store.get(&CORE_EVENTS, Some("default"), "e").unwrap();
        assert_eq!(core["involvedObject"]["name"], "web");
        assert_eq!(core["message"], "hello");
        assert_eq!(core["count"], 3);
        assert_eq!(core["firstTimestamp"], "2025-01-02T03:04:05Z");
        assert_eq!(core["lastTimestamp"], "2025-01-02T03:05:00Z");
        assert_eq!(core["source"]["component"], "director");
        assert_eq!(core["metadata"]["resourceVersion"], "1");
    }
}
