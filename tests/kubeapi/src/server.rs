//! HTTP over TLS: connections, authentication, faults, routing, and the handlers that
//! turn requests into store operations, lists and watch streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::ops::{self, ListOptions, PatchOptions, PatchType};
use crate::resources::{self, ResourceType};
use crate::selector::{FieldSelector, LabelSelector, Selectors};
use crate::status::ApiError;
use crate::store::{Change, ChangeKind};
use crate::table::{self, Include};
use crate::{Fault, State};

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A watch without `timeoutSeconds` ends after this long.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// A response body: whole, or a stream of chunks (watches).
#[derive(Debug)]
pub(crate) enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Body::Full(Some(d)) => http_body::SizeHint::with_exact(d.len() as u64),
            Body::Full(None) => http_body::SizeHint::with_exact(0),
            Body::Stream(_) => http_body::SizeHint::default(),
        }
    }
}

/// Accept connections until shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                result = conn => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                }
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
        });
    }
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Body::Full(Some(Bytes::from(value.to_string()))));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(err: &ApiError) -> Response<Body> {
    json_response(
        StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &err.to_json(),
    )
}

fn ok(value: &Value) -> Response<Body> {
    json_response(StatusCode::OK, value)
}

fn result_response(result: Result<Value, ApiError>, code: StatusCode) -> Response<Body> {
    match result {
        Ok(v) => json_response(code, &v),
        Err(e) => error_response(&e),
    }
}

/// Percent-decode a query component (`+` is a space).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

fn is_true(params: &HashMap<String, String>, key: &str) -> bool {
    matches!(params.get(key).map(String::as_str), Some("true" | "1"))
}

/// What a resource path names.
#[derive(Debug)]
struct Target {
    rt: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// Parse `/api/v1/...` or `/apis/G/V/...` past the group version.
fn parse_target(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => {
            (Some((*ns).to_string()), {
                let mut v = vec![*plural];
                v.extend_from_slice(tail);
                v
            })
        }
        _ => (None, rest.to_vec()),
    };
    let rt = resources::lookup(group, version, rest.first()?)?;
    if namespace.is_some() && !rt.namespaced {
        return None;
    }
    let name = rest.get(1).map(|s| (*s).to_string());
    let subresource = rest.get(2).map(|s| (*s).to_string());
    if rest.len() > 3 {
        return None;
    }
    Some(Target {
        rt,
        namespace,
        name,
        subresource,
    })
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let response = route(&state, req).await;
    tracing::info!(
        method = %method,
        path = %path,
        query = %query,
        status = response.status().as_u16(),
        "request"
    );
    response
}

async fn route(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if matches!(path.as_str(), "/healthz" | "/livez" | "/readyz") {
        let mut r = Response::new(Body::Full(Some(Bytes::from_static(b"ok"))));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain"),
        );
        return r;
    }
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.trim() == state.token);
    if !authorized {
        return error_response(&ApiError::unauthorized());
    }
    if let Some(control) = path.strip_prefix("/_double/") {
        return control_request(state, control, req).await;
    }

    // Faults apply to every API request.
    let mut fault_rx = state.fault.subscribe();
    loop {
        let fault = *fault_rx.borrow_and_update();
        match fault {
            Fault::Hang => {
                if fault_rx.changed().await.is_err() {
                    return error_response(&ApiError::internal("shutting down"));
                }
            }
            Fault::Slow(delay) => {
                tokio::time::sleep(delay).await;
                break;
            }
            Fault::Error500 => {
                return error_response(&ApiError::internal(
                    "the server is failing (fault error500)",
                ))
            }
            Fault::Normal | Fault::Expire => break,
        }
    }

    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    if method == Method::GET {
        if let Some(doc) = discovery(state, &segments) {
            return ok(&doc);
        }
    }
    let target = match segments.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => parse_target("", "v1", rest),
        ["apis", group, version, rest @ ..] if !rest.is_empty() => {
            parse_target(group, version, rest)
        }
        _ => None,
    };
    let Some(target) = target else {
        return error_response(&ApiError::no_route());
    };
    resource_request(state, target, req).await
}

fn discovery(state: &State, segments: &[&str]) -> Option<Value> {
    match segments {
        ["version"] => Some(resources::version_info()),
        ["api"] => Some(resources::api_versions(&state.server_address)),
        ["api", "v1"] => Some(resources::api_resource_list("", "v1")),
        ["apis"] => Some(resources::api_group_list()),
        ["apis", group] => resources::api_group_doc(group),
        ["apis", group, version] if resources::has_group_version(group, version) => {
            Some(resources::api_resource_list(group, version))
        }
        ["openapi", "v3"] => Some(resources::openapi_v3_root()),
        ["openapi", "v3", "api", version] => resources::openapi_v3_group_version("", version),
        ["openapi", "v3", "apis", group, version] => {
            resources::openapi_v3_group_version(group, version)
        }
        _ => None,
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    req.into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body of the request could not be decoded: {e}"))
    })
}

async fn control_request(state: &Arc<State>, what: &str, req: Request<Incoming>) -> Response<Body> {
    match (req.method().clone(), what) {
        (Method::GET, "stats") => ok(&json!(crate::lock(&state.stats).clone())),
        (Method::GET, "fault") => ok(&json!({"mode": state.fault.borrow().to_string()})),
        (Method::POST, "fault") => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(e) => return error_response(&e),
            };
            let mode = match serde_json::from_slice::<Value>(&body) {
                Ok(Value::String(s)) => s,
                Ok(v) => v
                    .get("mode")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                Err(e) => return error_response(&ApiError::bad_request(e.to_string())),
            };
            match mode.parse::<Fault>() {
                Ok(fault) => {
                    state.set_fault(fault);
                    ok(&json!({"mode": state.fault.borrow().to_string()}))
                }
                Err(e) => error_response(&ApiError::bad_request(e)),
            }
        }
        _ => error_response(&ApiError::no_route()),
    }
}

fn selectors(params: &HashMap<String, String>) -> Result<Selectors, ApiError> {
    Ok(Selectors {
        labels: LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))?,
        fields: FieldSelector::parse(params.get("fieldSelector").map_or("", String::as_str))?,
    })
}

async fn resource_request(
    state: &Arc<State>,
    target: Target,
    req: Request<Incoming>,
) -> Response<Body> {
    let params = parse_query(req.uri().query().unwrap_or_default());
    let method = req.method().clone();
    let rt = target.rt;
    let ns = target.namespace.clone();
    let status_write = match target.subresource.as_deref() {
        None => false,
        Some("status") if rt.status => true,
        Some(_) => return error_response(&ApiError::no_route()),
    };
    let resource_label = if status_write {
        format!("{}/status", rt.qualified())
    } else {
        rt.qualified()
    };
    let tables = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(table::wanted)
        .then(|| Include::from_param(params.get("includeObject").map(String::as_str)));
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();

    match (method, target.name) {
        (Method::GET, None) => {
            let watch = is_true(&params, "watch");
            state.count(if watch { "watch" } else { "list" }, &resource_label);
            let selectors = match selectors(&params) {
                Ok(s) => s,
                Err(e) => return error_response(&e),
            };
            if watch {
                return watch_response(state, rt, ns, selectors, &params, tables);
            }
            let options = ListOptions {
                selectors,
                limit: params
                    .get("limit")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0),
                continue_token: params.get("continue").cloned(),
            };
            let listed = state.read(|store| ops::list(store, rt, ns.as_deref(), &options));
            let listed = match (listed, tables) {
                (Ok(list), Some(include)) => {
                    let items = list
                        .get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    let metadata = list.get("metadata").cloned().unwrap_or(Value::Null);
                    Ok(table::table(rt, &items, metadata, include))
                }
                (other, _) => other,
            };
            result_response(listed, StatusCode::OK)
        }
        (Method::GET, Some(name)) => {
            state.count("get", &resource_label);
            let got = state.read(|store| {
                store
                    .get(rt, ns.as_deref(), &name)
                    .cloned()
                    .ok_or_else(|| ApiError::not_found(rt, &name))
            });
            let got = match (got, tables) {
                (Ok(object), Some(include)) => {
                    let rv = object
                        .pointer("/metadata/resourceVersion")
                        .cloned()
                        .unwrap_or(Value::Null);
                    Ok(table::table(
                        rt,
                        &[object],
                        json!({"resourceVersion": rv}),
                        include,
                    ))
                }
                (other, _) => other,
            };
            result_response(got, StatusCode::OK)
        }
        (Method::POST, None) => {
            state.count("create", &resource_label);
            let body = match read_body(req).await.and_then(|b| parse_json(&b)) {
                Ok(b) => b,
                Err(e) => return error_response(&e),
            };
            if rt.namespaced && ns.is_none() {
                return error_response(&ApiError::method_not_allowed("create without a namespace"));
            }
            result_response(
                state.write(|store| ops::create(store, rt, ns.as_deref(), body, ops::Origin::Api)),
                StatusCode::CREATED,
            )
        }
        (Method::PUT, Some(name)) => {
            state.count("update", &resource_label);
            let body = match read_body(req).await.and_then(|b| parse_json(&b)) {
                Ok(b) => b,
                Err(e) => return error_response(&e),
            };
            result_response(
                state.write(|store| {
                    ops::update(store, rt, ns.as_deref(), &name, body, status_write)
                }),
                StatusCode::OK,
            )
        }
        (Method::PATCH, Some(name)) => {
            state.count("patch", &resource_label);
            let Some(kind) = PatchType::from_content_type(&content_type) else {
                return error_response(&ApiError::unsupported_media_type(&content_type));
            };
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(e) => return error_response(&e),
            };
            let options = PatchOptions {
                field_manager: params.get("fieldManager").cloned(),
                status_write,
            };
            let existed = state.read(|store| store.get(rt, ns.as_deref(), &name).is_some());
            let result = state
                .write(|store| ops::patch(store, rt, ns.as_deref(), &name, kind, &body, &options));
            let code = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            result_response(result, code)
        }
        (Method::DELETE, Some(name)) => {
            state.count("delete", &resource_label);
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(e) => return error_response(&e),
            };
            let options = if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body).unwrap_or(Value::Null)
            };
            result_response(
                state.write(|store| ops::delete(store, rt, ns.as_deref(), &name, &options)),
                StatusCode::OK,
            )
        }
        (method, _) => error_response(&ApiError::method_not_allowed(method.as_str())),
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn expired_line(asked: u64, oldest: u64) -> Bytes {
    let status = ApiError::expired(format!("too old resource version: {asked} ({oldest})"));
    event_line("ERROR", &status.to_json())
}

fn bookmark(rt: &ResourceType, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        if let Some(meta) = metadata.as_object_mut() {
            meta.insert(
                "annotations".into(),
                json!({"k8s.io/initial-events-end": "true"}),
            );
        }
    }
    event_line(
        "BOOKMARK",
        &json!({"apiVersion": rt.api_version(), "kind": rt.kind, "metadata": metadata}),
    )
}

/// What a change looks like to a watch with these selectors: an object that starts
/// matching is ADDED, one that stops matching is DELETED (its previous state).
fn visible(
    change: &Change,
    namespace: Option<&str>,
    selectors: &Selectors,
) -> Option<(&'static str, Value)> {
    let in_ns = |v: &Value| {
        namespace
            .is_none_or(|ns| v.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns))
    };
    if !in_ns(&change.object) {
        return None;
    }
    let now = selectors.matches(&change.object);
    let before = change
        .previous
        .as_ref()
        .is_some_and(|p| selectors.matches(p));
    match change.kind {
        ChangeKind::Added => now.then(|| ("ADDED", change.object.clone())),
        ChangeKind::Deleted => (now || before).then(|| ("DELETED", change.object.clone())),
        ChangeKind::Modified => match (before, now) {
            (true, true) => Some(("MODIFIED", change.object.clone())),
            (false, true) => Some(("ADDED", change.object.clone())),
            (true, false) => {
                let mut last = change.previous.clone().unwrap_or(Value::Null);
                crate::store::set_rv(&mut last, change.rv);
                Some(("DELETED", last))
            }
            (false, false) => None,
        },
    }
}

fn watch_response(
    state: &Arc<State>,
    rt: &'static ResourceType,
    namespace: Option<String>,
    selectors: Selectors,
    params: &HashMap<String, String>,
    tables: Option<Include>,
) -> Response<Body> {
    // Each object as itself, or as a one-row Table when kubectl asked for tables.
    let render = move |kind: &str, object: &Value| -> Bytes {
        match tables {
            Some(include) => event_line(
                kind,
                &table::table(rt, std::slice::from_ref(object), json!({}), include),
            ),
            None => event_line(kind, object),
        }
    };
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let bookmarks = is_true(params, "allowWatchBookmarks");
    let send_initial = is_true(params, "sendInitialEvents");
    let asked = params.get("resourceVersion").cloned().unwrap_or_default();
    let asked_rv = if asked.is_empty() || asked == "0" {
        None
    } else {
        match asked.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => {
                return error_response(&ApiError::bad_request(format!(
                    "invalid resource version: {asked}"
                )))
            }
        }
    };

    // Subscribe before reading the store so no change falls between the two.
    let mut changed = state.changed.subscribe();
    let mut expired = state.expired.subscribe();
    let mut fault = state.fault.subscribe();
    let (tx, rx) = mpsc::channel::<Bytes>(256);

    let start = state.read(|store| {
        if send_initial || asked_rv.is_none() {
            let initial: Vec<Bytes> = store
                .list(rt, namespace.as_deref(), None)
                .filter(|(_, v)| selectors.matches(v))
                .map(|(_, v)| render("ADDED", v))
                .collect();
            Ok((store.counter(), initial))
        } else {
            match asked_rv {
                Some(rv) if rv < store.floor() => Err(expired_line(rv, store.floor())),
                Some(rv) => Ok((rv, Vec::new())),
                None => Ok((store.counter(), Vec::new())),
            }
        }
    });

    let state = state.clone();
    tokio::spawn(async move {
        let (mut cursor, initial) = match start {
            Ok(s) => s,
            Err(line) => {
                let _ = tx.send(line).await;
                return;
            }
        };
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if send_initial && tx.send(bookmark(rt, cursor, true)).await.is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + state.bookmark_every,
            state.bookmark_every.max(Duration::from_millis(10)),
        );
        let mut pending = true;
        loop {
            let frozen = *fault.borrow() == Fault::Hang;
            if pending && !frozen {
                pending = false;
                let drained = state.read(|store| {
                    if cursor < store.floor() {
                        return Err(expired_line(cursor, store.floor()));
                    }
                    let lines: Vec<Bytes> = store
                        .changes_since(cursor)
                        .filter(|c| c.resource == rt.key())
                        .filter_map(|c| visible(c, namespace.as_deref(), &selectors))
                        .map(|(kind, object)| render(kind, &object))
                        .collect();
                    Ok((store.counter(), lines))
                });
                match drained {
                    Ok((rv, lines)) => {
                        cursor = rv;
                        for line in lines {
                            if tx.send(line).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(line) => {
                        let _ = tx.send(line).await;
                        return;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = ticker.tick() => {
                    if bookmarks && !frozen && tx.send(bookmark(rt, cursor, false)).await.is_err() {
                        return;
                    }
                }
                r = changed.changed() => {
                    if r.is_err() {
                        return;
                    }
                    pending = true;
                }
                r = expired.changed() => {
                    if r.is_ok() {
                        let floor = state.read(crate::store::Store::floor);
                        let _ = tx.send(expired_line(cursor, floor)).await;
                    }
                    return;
                }
                r = fault.changed() => {
                    if r.is_err() {
                        return;
                    }
                    pending = true;
                }
                () = tx.closed() => return,
            }
        }
    });

    let mut response = Response::new(Body::Stream(rx));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache, private"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query("labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=1&limit=2");
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert!(is_true(&q, "watch"));
        assert_eq!(q["limit"], "2");
        assert_eq!(decode("100%"), "100%");
    }

    #[test]
    fn paths() {
        let t = parse_target("", "v1", &["namespaces", "ns", "services", "a", "status"]).unwrap();
        assert_eq!(t.rt.plural, "services");
        assert_eq!(t.namespace.as_deref(), Some("ns"));
        assert_eq!(t.name.as_deref(), Some("a"));
        assert_eq!(t.subresource.as_deref(), Some("status"));
        let t = parse_target("", "v1", &["namespaces", "ns"]).unwrap();
        assert_eq!(t.rt.plural, "namespaces");
        assert_eq!(t.name.as_deref(), Some("ns"));
        let t = parse_target("", "v1", &["namespaces", "ns", "status"]).unwrap();
        assert_eq!(t.subresource.as_deref(), Some("status"));
        assert!(parse_target("", "v1", &["namespaces", "ns", "nodes"]).is_none());
        let t = parse_target("", "v1", &["services"]).unwrap();
        assert!(t.namespace.is_none() && t.name.is_none());
    }
}
