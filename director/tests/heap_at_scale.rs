//! Where a director's heap goes at 10,000 static services (four backends
//! each, the scale benchmark's shape): each part the daemon keeps is built
//! the way the daemon builds it and measured by jemalloc's count of live
//! bytes (the daemon's allocator). It measures and prints; it asserts only
//! that each part was measured. Run by hand (the other test here, that
//! the build gives jemalloc one arena, runs with the unit tests):
//! `cargo test --release -p director --test heap_at_scale -- --ignored --nocapture`
//! (docs/benchmarks.md, "Memory: jemalloc with one arena, and where the
//! heap goes").

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a measurement")]

use std::hint::black_box;

use consensus::{apply, ClusterState, Response};
use director::ops::memory::{arenas, dirty_decay_ms, heap, Allocator};

#[global_allocator]
static ALLOCATOR: Allocator = Allocator {};

const SERVICES: u32 = 10_000;

fn allocated() -> i64 {
    heap().expect("jemalloc is the allocator").allocated as i64
}

/// Live bytes `build` leaves allocated in what it returns.
fn measure<T>(what: &str, rows: &mut Vec<(String, i64)>, build: impl FnOnce() -> T) -> T {
    let before = allocated();
    let out = black_box(build());
    let bytes = allocated() - before;
    println!(
        "| {what} | {:.1} | {:.0} |",
        bytes as f64 / 1048576.0,
        bytes as f64 / f64::from(SERVICES)
    );
    rows.push((what.to_string(), bytes));
    out
}

/// The lab's configuration of d1 with a pool and 10,000 services of the
/// scale benchmark's shape.
fn file() -> String {
    let mut text = include_str!("../../tests/lab/d1.yaml").replace(
        "pools:\n",
        "pools:\n  - name: scale\n    addresses: [\"10.20.0.0/16\"]\n",
    );
    for i in 0..SERVICES {
        text.push_str(&format!(
            "  - name: s{i}\n    vip: 10.20.{}.{}\n    ports:\n      - {{port: 80, protocol: tcp}}\n    \
             backends: [\"10.10.0.21:30080\", \"10.10.0.22:30080\", \"10.10.0.21:30081\", \"10.10.0.22:30081\"]\n",
            (i + 1) / 256,
            (i + 1) % 256
        ));
    }
    // As the daemon reads it: a buffer of the file's size.
    text.shrink_to_fit();
    text
}

/// The build gives jemalloc one arena and a one-second decay of freed pages
/// (`.cargo/config.toml`): a build without them keeps several arenas' freed
/// pages, for ten seconds (docs/architecture.md).
#[test]
fn the_allocator_has_one_arena_and_returns_pages_within_a_second() {
    assert_eq!(arenas(), Some(1));
    assert_eq!(dirty_decay_ms(), Some(1000));
}

#[test]
#[ignore = "a measurement: run by hand with --ignored --nocapture"]
fn heap_of_each_part_at_10000_services() {
    let mut rows = Vec::new();
    println!("| part | MiB | bytes per service |");
    println!("|---|---|---|");
    let text = measure("the file's text", &mut rows, file);
    let config = measure("the parsed configuration", &mut rows, || {
        director::config::parse(&text).unwrap()
    });
    let wanted = measure("the static services wanted", &mut rows, || {
        director::sources::statics::wanted(&config)
    });
    let cmds = measure("the leader's commands to add them", &mut rows, || {
        director::leader::catalogue(&config, &wanted, &ClusterState::default(), None).cmds
    });
    let state = measure("the replicated state", &mut rows, || {
        let mut s = ClusterState::default();
        for c in cmds.clone() {
            assert!(!matches!(apply(&mut s, c), Response::Rejected(_)));
        }
        s
    });
    assert!(state.services.len() >= SERVICES as usize);
    let copy = measure("a copy of the state (shared services)", &mut rows, || {
        state.clone()
    });
    let json = measure("the state as JSON (a flush, a snapshot)", &mut rows, || {
        serde_json::to_vec(&state).unwrap()
    });
    let ipvs = measure("the IPVS reconciler's desired table", &mut rows, || {
        director::dataplane::ipvs::desired(&state, &Default::default(), &Default::default())
    });
    let nft = measure("the nft reconciler's desired tables", &mut rows, || {
        director::dataplane::nft::desired(&state, &Default::default())
    });
    let targets = measure("the health checker's targets", &mut rows, || {
        director::health::targets(&state)
    });
    drop(black_box((
        text, config, wanted, cmds, copy, json, ipvs, nft, targets,
    )));
    assert_eq!(rows.len(), 10);
}
