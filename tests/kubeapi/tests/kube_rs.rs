//! The double driven by the real kube-rs 5.0 client: what kube-rs sends and expects
//! (KUBERNETES.md, "What kube-rs's watcher sends" and "Server behaviour").

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Node, ObjectReference, Service};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt as _;
use kube::{Client, Config, ResourceExt as _};
use kube_double::{Double, Fault, Options};
use serde_json::{json, Value};

async fn start_with(opts: Options) -> (Double, Client) {
    let double = Double::start(opts).await.unwrap();
    let client = client_for(&double, None).await;
    (double, client)
}

async fn start() -> (Double, Client) {
    start_with(Options {
        bookmark_every: Duration::from_millis(300),
        ..Options::default()
    })
    .await
}

async fn client_for(double: &Double, read_timeout: Option<Duration>) -> Client {
    let kubeconfig = Kubeconfig::read_from(double.kubeconfig()).unwrap();
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    if read_timeout.is_some() {
        config.read_timeout = read_timeout;
        config.reset_reader_on_write = true;
    }
    Client::try_from(config).unwrap()
}

fn lb_service(name: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "director.example/lb",
            "ports": [{"name": "http", "port": 80}]
        }
    }))
    .unwrap()
}

fn api_error(err: kube::Error) -> (u16, String, String) {
    match err {
        kube::Error::Api(status) => (status.code, status.reason.clone(), status.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Await the next item of a stream, with a deadline.
async fn next<S: futures::Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no event within 10 s")
        .expect("stream ended")
}

#[tokio::test]
async fn create_get_and_list_in_pages() {
    let (double, client) = start().await;
    let api: Api<Service> = Api::namespaced(client, "default");
    for i in 0..5 {
        api.create(&PostParams::default(), &lb_service(&format!("svc-{i}")))
            .await
            .unwrap();
    }
    let got = api.get("svc-3").await.unwrap();
    assert!(got.metadata.uid.is_some());
    assert_eq!(got.metadata.generation, Some(1));
    let spec = got.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert!(spec.cluster_ip.unwrap().starts_with("10.43."));
    let port = &spec.ports.unwrap()[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    assert!((30000..=32767).contains(&port.node_port.unwrap()));

    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut lp = ListParams::default().limit(2);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await.unwrap();
        pages += 1;
        names.extend(page.items.iter().map(|s| s.metadata.name.clone().unwrap()));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            assert!(!page
                .metadata
                .resource_version
                .unwrap_or_default()
                .is_empty());
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["svc-0", "svc-1", "svc-2", "svc-3", "svc-4"]);

    let selected = api
        .list(&ListParams::default().labels("app in (svc-1,svc-4)"))
        .await
        .unwrap();
    assert_eq!(selected.items.len(), 2);
    let by_field = api
        .list(&ListParams::default().fields("metadata.name=svc-2"))
        .await
        .unwrap();
    assert_eq!(by_field.items.len(), 1);
    let err = api
        .create(&PostParams::default(), &lb_service("svc-0"))
        .await
        .unwrap_err();
    assert_eq!(api_error(err).1, "AlreadyExists");
    assert_eq!(api_error(api.get("nope").await.unwrap_err()).0, 404);
    assert_eq!(double.stats().count("create", "services"), 6);
    assert_eq!(double.stats().count("list", "services"), 5);
}

#[tokio::test]
async fn watcher_sees_changes_and_relists_after_expiry() {
    let (double, client) = start().await;
    let api: Api<Service> = Api::namespaced(client, "default");
    let mut stream = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    // The initial list: Init, InitDone.
    assert!(matches!(
        next(&mut stream).await.unwrap(),
        watcher::Event::Init
    ));
    assert!(matches!(
        next(&mut stream).await.unwrap(),
        watcher::Event::InitDone
    ));

    api.create(&PostParams::default(), &lb_service("a"))
        .await
        .unwrap();
    match next(&mut stream).await.unwrap() {
        watcher::Event::Apply(s) => assert_eq!(s.metadata.name.as_deref(), Some("a")),
        other => panic!("{other:?}"),
    }
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
    )
    .await
    .unwrap();
    match next(&mut stream).await.unwrap() {
        watcher::Event::Apply(s) => assert_eq!(s.labels().get("x").map(String::as_str), Some("1")),
        other => panic!("{other:?}"),
    }
    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(matches!(
        next(&mut stream).await.unwrap(),
        watcher::Event::Delete(_)
    ));

    // Expiry ends the watch with a 410 ERROR event; the watcher lists again.
    let lists_before = double.stats().count("list", "services");
    double.set_fault(Fault::Expire);
    api.create(&PostParams::default(), &lb_service("b"))
        .await
        .unwrap();
    let mut seen_b = false;
    for _ in 0..10 {
        match next(&mut stream).await {
            Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s))
                if s.metadata.name.as_deref() == Some("b") =>
            {
                seen_b = true;
            }
            Ok(watcher::Event::InitDone) if seen_b => break,
            Ok(_) | Err(_) => {}
        }
    }
    assert!(seen_b, "the watcher never saw b after the expiry");
    assert!(
        double.stats().count("list", "services") > lists_before,
        "no relist"
    );
    // And it keeps following changes.
    api.create(&PostParams::default(), &lb_service("c"))
        .await
        .unwrap();
    loop {
        if let watcher::Event::Apply(s) = next(&mut stream).await.unwrap() {
            if s.metadata.name.as_deref() == Some("c") {
                break;
            }
        }
    }
}

#[tokio::test]
async fn streaming_list_ends_with_initial_events_bookmark() {
    let (_double, client) = start().await;
    let api: Api<Service> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &lb_service("a"))
        .await
        .unwrap();
    let objects: Vec<Service> = watcher(api.clone(), watcher::Config::default().streaming_lists())
        .default_backoff()
        .applied_objects()
        .take(1)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(objects[0].metadata.name.as_deref(), Some("a"));
}

#[tokio::test]
async fn raw_watch_bookmarks_selectors_and_expired_versions() {
    let (double, client) = start().await;
    let api: Api<Service> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &lb_service("a"))
        .await
        .unwrap();
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    // A label selector: an object that stops matching is DELETED.
    let wp = WatchParams::default().labels("app=a");
    let mut events = api.watch(&wp, &rv).await.unwrap().boxed();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    let mut saw_delete = false;
    let mut saw_bookmark = false;
    while !(saw_delete && saw_bookmark) {
        match next(&mut events).await.unwrap() {
            WatchEvent::Deleted(s) => {
                assert_eq!(s.metadata.name.as_deref(), Some("a"));
                saw_delete = true;
            }
            WatchEvent::Bookmark(b) => {
                assert!(!b.metadata.resource_version.is_empty());
                saw_bookmark = true;
            }
            other => panic!("{other:?}"),
        }
    }

    // A resourceVersion older than the history: HTTP 200 and one ERROR event (410).
    double.set_fault(Fault::Expire);
    api.create(&PostParams::default(), &lb_service("b"))
        .await
        .unwrap();
    let mut events = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match next(&mut events).await.unwrap() {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("{other:?}"),
    }
    assert!(tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .is_none());

    // An expired continue token is an HTTP 410.
    let mut token_list = ListParams::default().limit(1);
    let page = api.list(&token_list).await.unwrap();
    let token = page.metadata.continue_.unwrap();
    double.set_fault(Fault::Expire);
    api.create(&PostParams::default(), &lb_service("c"))
        .await
        .unwrap();
    token_list = token_list.continue_token(&token);
    assert_eq!(api_error(api.list(&token_list).await.unwrap_err()).0, 410);
}

#[tokio::test]
async fn status_writes_change_only_status() {
    let (_double, client) = start().await;
    let api: Api<Service> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &lb_service("a"))
        .await
        .unwrap();
    let patched = api
        .patch_status(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "spec": {"sessionAffinity": "ClientIP"},
                "metadata": {"labels": {"sneaky": "yes"}},
                "status": {"loadBalancer": {"ingress": [{"ip": "10.10.0.240"}]}}
            })),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.spec.as_ref().unwrap().session_affinity.as_deref(),
        Some("None")
    );
    assert!(!patched.labels().contains_key("sneaky"));
    let ingress = &patched
        .status
        .as_ref()
        .unwrap()
        .load_balancer
        .as_ref()
        .unwrap()
        .ingress
        .as_ref()
        .unwrap()[0];
    assert_eq!(ingress.ip.as_deref(), Some("10.10.0.240"));
    assert_eq!(ingress.ip_mode.as_deref(), Some("VIP"));

    // A write to the main resource keeps the stored status.
    let main = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"sessionAffinity": "ClientIP"}, "status": {"loadBalancer": {}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        main.spec.as_ref().unwrap().session_affinity.as_deref(),
        Some("ClientIP")
    );
    assert!(main
        .status
        .unwrap()
        .load_balancer
        .unwrap()
        .ingress
        .is_some());

    // A no-op write does not bump the resourceVersion.
    let again = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"sessionAffinity": "ClientIP"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        main.metadata.resource_version
    );

    // Server-side apply needs a field manager.
    let apply = Patch::Apply(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "status": {"loadBalancer": {"ingress": [{"ip": "10.10.0.241", "ipMode": "Proxy"}]}}}),
    );
    let (code, reason, message) = api_error(
        api.patch_status("a", &PatchParams::default(), &apply)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(message.contains("fieldManager"), "{message}");
    let applied = api
        .patch_status("a", &PatchParams::apply("director").force(), &apply)
        .await
        .unwrap();
    let ingress = &applied
        .status
        .unwrap()
        .load_balancer
        .unwrap()
        .ingress
        .unwrap();
    assert_eq!(ingress.len(), 1);
    assert_eq!(ingress[0].ip_mode.as_deref(), Some("Proxy"));
}

#[tokio::test]
async fn stale_update_is_a_conflict() {
    let (_double, client) = start().await;
    let api: Api<Service> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &lb_service("a"))
        .await
        .unwrap();
    let mut stale = api.get("a").await.unwrap();
    let mut fresh = stale.clone();
    fresh
        .metadata
        .labels
        .get_or_insert_default()
        .insert("v".into(), "1".into());
    api.replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap();
    stale
        .metadata
        .labels
        .get_or_insert_default()
        .insert("v".into(), "2".into());
    let (code, reason, message) = api_error(
        api.replace("a", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(
        message,
        "Operation cannot be fulfilled on services \"a\": the object has been modified; please apply your changes to the latest version and try again"
    );
}

#[tokio::test]
async fn finalizers_hold_a_deleted_object_until_removed() {
    let (_double, client) = start().await;
    let api: Api<Service> = Api::namespaced(client, "default");
    let mut svc = lb_service("a");
    svc.metadata.finalizers = Some(vec!["service.kubernetes.io/load-balancer-cleanup".into()]);
    api.create(&PostParams::default(), &svc).await.unwrap();
    let rv = api
        .get("a")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut events = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();

    let deleted = api.delete("a", &DeleteParams::default()).await.unwrap();
    let held = deleted.left().expect("the object, not a Status");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(matches!(
        next(&mut events).await.unwrap(),
        WatchEvent::Modified(_)
    ));
    assert!(api
        .get("a")
        .await
        .unwrap()
        .metadata
        .deletion_timestamp
        .is_some());

    let (code, _, message) = api_error(
        api.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["service.kubernetes.io/load-balancer-cleanup", "other"]}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(
        message.contains("no new finalizers can be added"),
        "{message}"
    );

    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(matches!(
        next(&mut events).await.unwrap(),
        WatchEvent::Deleted(_)
    ));
    assert_eq!(api_error(api.get("a").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn service_validation() {
    let (_double, client) = start().await;
    let api: Api<Service> = Api::namespaced(client, "default");
    let pp = PatchParams::default();
    let invalid = |err: kube::Error| {
        let (code, reason, message) = api_error(err);
        assert_eq!((code, reason.as_str()), (422, "Invalid"), "{message}");
        message
    };

    // A class is only for LoadBalancer.
    let mut cluster_ip: Service = serde_json::from_value(json!({
        "metadata": {"name": "plain"},
        "spec": {"loadBalancerClass": "x/y", "ports": [{"port": 80}]}
    }))
    .unwrap();
    let message = invalid(
        api.create(&PostParams::default(), &cluster_ip)
            .await
            .unwrap_err(),
    );
    assert!(message.contains("spec.loadBalancerClass"), "{message}");
    cluster_ip.spec.as_mut().unwrap().load_balancer_class = None;
    let created = api
        .create(&PostParams::default(), &cluster_ip)
        .await
        .unwrap();
    assert_eq!(created.spec.unwrap().type_.as_deref(), Some("ClusterIP"));

    // The class is fixed once the Service is a LoadBalancer, nil to a value included.
    let mut no_class = lb_service("noclass");
    no_class.spec.as_mut().unwrap().load_balancer_class = None;
    api.create(&PostParams::default(), &no_class).await.unwrap();
    let message = invalid(
        api.patch(
            "noclass",
            &pp,
            &Patch::Merge(json!({"spec": {"loadBalancerClass": "x/y"}})),
        )
        .await
        .unwrap_err(),
    );
    assert!(message.contains("may not change once set"), "{message}");
    let lb = api
        .create(&PostParams::default(), &lb_service("lb"))
        .await
        .unwrap();
    invalid(
        api.patch(
            "lb",
            &pp,
            &Patch::Merge(json!({"spec": {"loadBalancerClass": "other/class"}})),
        )
        .await
        .unwrap_err(),
    );

    // Ingress addresses.
    let message = invalid(
        api.patch_status(
            "lb",
            &pp,
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "not-an-ip"}]}}})),
        )
        .await
        .unwrap_err(),
    );
    assert!(
        message.contains("status.loadBalancer.ingress[0].ip"),
        "{message}"
    );
    invalid(
        api.patch_status("lb", &pp, &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1", "ipMode": "Bogus"}]}}})))
            .await
            .unwrap_err(),
    );
    invalid(
        api.patch_status("lb", &pp, &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"hostname": "a.example", "ipMode": "Proxy"}]}}})))
            .await
            .unwrap_err(),
    );

    // Node ports: allocated in range, a taken one refused.
    let taken = lb.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
    assert!((30000..=32767).contains(&taken));
    let mut clash = lb_service("clash");
    clash.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].node_port = Some(taken);
    let message = invalid(
        api.create(&PostParams::default(), &clash)
            .await
            .unwrap_err(),
    );
    assert!(
        message.contains("provided port is already allocated"),
        "{message}"
    );

    // Leaving LoadBalancer clears the status; the class must go too.
    api.patch_status(
        "lb",
        &pp,
        &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.10.0.240"}]}}})),
    )
    .await
    .unwrap();
    invalid(
        api.patch(
            "lb",
            &pp,
            &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
        )
        .await
        .unwrap_err(),
    );
    let plain = api
        .patch(
            "lb",
            &pp,
            &Patch::Merge(json!({"spec": {"type": "ClusterIP", "loadBalancerClass": null}})),
        )
        .await
        .unwrap();
    assert!(plain
        .status
        .unwrap()
        .load_balancer
        .unwrap()
        .ingress
        .is_none());
    assert!(plain.spec.unwrap().ports.unwrap()[0].node_port.is_none());
}

#[tokio::test]
async fn recorder_events_and_their_core_view() {
    let (double, client) = start().await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = services
        .create(&PostParams::default(), &lb_service("web"))
        .await
        .unwrap();
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: svc.metadata.name.clone(),
        namespace: svc.metadata.namespace.clone(),
        uid: svc.metadata.uid.clone(),
        ..Default::default()
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "director.example/lb".into(),
            instance: Some("node-1".into()),
        },
    );
    let event = Event {
        type_: EventType::Normal,
        reason: "EnsuredLoadBalancer".into(),
        note: Some("VIP 10.10.0.240 on node-1".into()),
        action: "Ensure".into(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();
    assert_eq!(double.stats().count("create", "events.events.k8s.io"), 1);
    assert_eq!(double.stats().count("patch", "events.events.k8s.io"), 1);

    let events: Api<K8sEvent> = Api::namespaced(client.clone(), "default");
    let stored = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(stored.items.len(), 1);
    let series = stored.items[0]
        .series
        .as_ref()
        .expect("a series after the repeat");
    assert_eq!(series.count, 2);

    // The core/v1 view kubectl describe reads.
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let fields = format!(
        "involvedObject.name=web,involvedObject.namespace=default,involvedObject.kind=Service,involvedObject.uid={}",
        svc.metadata.uid.unwrap()
    );
    let view = core
        .list(&ListParams::default().fields(&fields))
        .await
        .unwrap();
    assert_eq!(view.items.len(), 1);
    assert_eq!(view.items[0].count, Some(2));
    assert_eq!(
        view.items[0].message.as_deref(),
        Some("VIP 10.10.0.240 on node-1")
    );

    // Validation of what the Recorder may not send.
    let too_long: K8sEvent = serde_json::from_value(json!({
        "metadata": {"name": "bad"},
        "eventTime": "2025-01-01T00:00:00.000000Z",
        "reportingController": "x", "reportingInstance": "y", "action": "a", "type": "Normal",
        "reason": "r".repeat(129)
    }))
    .unwrap();
    assert_eq!(
        api_error(
            events
                .create(&PostParams::default(), &too_long)
                .await
                .unwrap_err()
        )
        .0,
        422
    );
}

#[tokio::test]
async fn error500_then_normal() {
    let (double, client) = start().await;
    let api: Api<Node> = Api::all(client);
    double.set_fault(Fault::Error500);
    let (code, reason, _) = api_error(api.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (500, "InternalError"));
    double.set_fault(Fault::Normal);
    api.list(&ListParams::default()).await.unwrap();
}

#[tokio::test]
async fn hang_times_a_client_out() {
    let (double, _) = start().await;
    let client = client_for(&double, Some(Duration::from_millis(500))).await;
    let api: Api<Node> = Api::all(client);
    double
        .create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}))
        .unwrap();
    api.get("node-1").await.unwrap();
    double.set_fault(Fault::Hang);
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), api.get("node-1")).await;
    assert!(result
        .expect("the client's own timeout should fire")
        .is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
    double.set_fault(Fault::Slow(Duration::from_millis(50)));
    api.get("node-1").await.unwrap();
    double.set_fault(Fault::Normal);
    api.get("node-1").await.unwrap();
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        state_file: Some(dir.path().join("state.json")),
        kubeconfig: Some(dir.path().join("kubeconfig")),
        ..Options::default()
    };
    let (double, client) = start_with(opts.clone()).await;
    let api: Api<Service> = Api::namespaced(client, "default");
    let before = api
        .create(&PostParams::default(), &lb_service("kept"))
        .await
        .unwrap();
    let token = double.token().to_string();
    let mut opts = opts;
    opts.listen = double.addrs().to_vec();
    double.shutdown().await;

    // Same address, same state: the client made from the first kubeconfig still trusts
    // the restarted double (same CA key) and is still let in (same token).
    let double = Double::start(opts).await.unwrap();
    assert_eq!(double.token(), token);
    let after = api.get("kept").await.unwrap();
    assert_eq!(after.metadata.uid, before.metadata.uid);
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(after.spec, before.spec);
    let next = api
        .create(&PostParams::default(), &lb_service("new"))
        .await
        .unwrap();
    let rv = |s: &Service| {
        s.metadata
            .resource_version
            .clone()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(rv(&next), rv(&before) + 1);
    // The restarted double hands out a different node port than the kept one.
    assert_ne!(
        next.spec.unwrap().ports.unwrap()[0].node_port,
        before.spec.unwrap().ports.unwrap()[0].node_port
    );
}

#[tokio::test]
async fn config_infer_reads_kubeconfig_from_the_environment() {
    let (double, _) = start().await;
    // The only test that touches the environment.
    std::env::set_var("KUBECONFIG", double.kubeconfig());
    let config = Config::infer().await.unwrap();
    assert_eq!(config.default_namespace, "default");
    let client = Client::try_from(config).unwrap();
    let nodes: Api<Node> = Api::all(client);
    assert!(nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized() {
    let (double, _) = start().await;
    let yaml = double.kubeconfig_yaml().replace(double.token(), "wrong");
    let kubeconfig = Kubeconfig::from_yaml(&yaml).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let api: Api<Node> = Api::all(Client::try_from(config).unwrap());
    assert_eq!(
        api_error(api.list(&ListParams::default()).await.unwrap_err()).0,
        401
    );
}

#[tokio::test]
async fn seeded_objects_are_served() {
    let (double, client) = start().await;
    let slice = double
        .create(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.0.5"], "nodeName": "node-1", "conditions": {"ready": true}}]
        }))
        .unwrap();
    assert_eq!(slice["metadata"]["namespace"], "default");
    let api: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(client, "default");
    let listed = api
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    let stored: Value = double
        .get(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            Some("default"),
            "web-abc",
        )
        .unwrap();
    assert_eq!(stored["endpoints"][0]["nodeName"], "node-1");
}

#[tokio::test]
async fn hang_freezes_open_watches() {
    let (double, client) = start().await;
    let api: Api<Node> = Api::all(client);
    let mut events = api
        .watch(&WatchParams::default().disable_bookmarks(), "0")
        .await
        .unwrap()
        .boxed();
    double.set_fault(Fault::Hang);
    double
        .create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}))
        .unwrap();
    let frozen = tokio::time::timeout(Duration::from_millis(500), events.next()).await;
    assert!(frozen.is_err(), "a watch sent {frozen:?} while hung");
    double.set_fault(Fault::Normal);
    match next(&mut events).await.unwrap() {
        WatchEvent::Added(node) => assert_eq!(node.metadata.name.as_deref(), Some("node-1")),
        other => panic!("{other:?}"),
    }
}
