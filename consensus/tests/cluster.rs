//! Three directors' Raft nodes in one process, over real TCP sockets on
//! loopback, each with its own redb file: election, replication, the loss of
//! the leader, and a restart from disk that catches up without
//! re-initialising (openraft #1535).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use consensus::state::{Director, Role};
use consensus::{Command, LeaseTiming, Node, NodeConfig, NodeId, Response, Timing};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(10);

fn director(id: NodeId) -> Command {
    Command::PutDirector(Director {
        id,
        name: format!("d{id}"),
        address: format!("10.10.0.{}:7946", 10 + id),
        role: Role::Data,
    })
}

/// Loopback addresses for voters 1..=n (ports reserved by binding and
/// releasing them).
fn loopback_voters(n: NodeId) -> BTreeMap<NodeId, String> {
    (1..=n)
        .map(|id| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            (id, l.local_addr().unwrap().to_string())
        })
        .collect()
}

async fn start(id: NodeId, voters: &BTreeMap<NodeId, String>, dir: &Path) -> Node {
    let listener = TcpListener::bind(&voters[&id]).await.unwrap();
    Node::start(
        NodeConfig {
            id,
            voters: voters.clone(),
            data_dir: dir.join(format!("node-{id}")),
            timing: Timing::default(),
            lease: LeaseTiming::default(),
            faults: Default::default(),
            security: consensus::Security::Insecure,
        },
        listener,
    )
    .await
    .unwrap()
}

/// Proposes on whichever node leads, retrying while leadership moves.
async fn propose(nodes: &[&Node], cmd: Command) -> Response {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for n in nodes {
            if let Ok(r) = n.propose(cmd.clone()).await {
                return r;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader took {cmd:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_survive_the_leader_and_restart_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let voters = loopback_voters(3);
    let n1 = start(1, &voters, dir.path()).await;
    let n2 = start(2, &voters, dir.path()).await;
    let n3 = start(3, &voters, dir.path()).await;
    let mut nodes = vec![n1, n2, n3];
    for n in &nodes {
        n.wait_for_leader(WAIT).await.unwrap();
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    assert_eq!(propose(&refs, director(1)).await, Response::Ok);
    assert_eq!(propose(&refs, director(2)).await, Response::Ok);
    for n in &nodes {
        until("replication to every node", || {
            n.state().directors.len() == 2
        })
        .await;
        assert_eq!(n.voters().into_iter().collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    // Lose the leader: the other two elect a new one and go on.
    let leader = nodes[0].leader().unwrap();
    let idx = nodes.iter().position(|n| n.id() == leader).unwrap();
    let old = nodes.remove(idx);
    let old_term = old.metrics().current_term;
    old.shutdown().await.unwrap();
    let refs: Vec<&Node> = nodes.iter().collect();
    assert_eq!(propose(&refs, director(3)).await, Response::Ok);
    let new_leader = nodes[0].leader().unwrap();
    assert_ne!(new_leader, leader);
    assert!(nodes[0].metrics().current_term > old_term);

    // The old leader restarts from its own disk, keeps its term and vote,
    // does not re-initialise, and catches up.
    let back = start(leader, &voters, dir.path()).await;
    assert!(
        back.metrics().current_term >= old_term,
        "term survived the restart"
    );
    assert_eq!(
        back.state().directors.len(),
        2,
        "applied state survived the restart"
    );
    until("the restarted node to catch up", || {
        back.state().directors.len() == 3
    })
    .await;
    assert_eq!(*back.state(), *nodes[0].state());
    assert_eq!(back.voters().into_iter().collect::<Vec<_>>(), vec![1, 2, 3]);

    for n in nodes {
        n.shutdown().await.unwrap();
    }
    back.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_the_voters_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let voters: BTreeMap<NodeId, String> = [(1, "127.0.0.1:1".to_string())].into();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Node::start(
        NodeConfig {
            id: 9,
            voters,
            data_dir: dir.path().to_path_buf(),
            timing: Timing::default(),
            lease: LeaseTiming::default(),
            faults: Default::default(),
            security: consensus::Security::Insecure,
        },
        listener,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("node 9 is not among the voters"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directors_join_and_leave_at_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let voters = loopback_voters(4);
    // The group starts as 1, 2, 3; node 4 knows the group but is not in it.
    let first: BTreeMap<NodeId, String> = voters
        .iter()
        .filter(|(id, _)| **id <= 3)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(id, &first, dir.path()).await);
    }
    let n4 = start(4, &voters, dir.path()).await;
    let leader = nodes[0].wait_for_leader(WAIT).await.unwrap();
    let lead = nodes.iter().find(|n| n.id() == leader).unwrap();
    assert_eq!(lead.propose(director(1)).await.unwrap(), Response::Ok);
    // Node 4 did not bootstrap a group of its own.
    assert_eq!(n4.leader(), None);

    lead.add_voter(4, &voters[&4]).await.unwrap();
    until("node 4 to catch up", || n4.state().directors.len() == 1).await;
    assert_eq!(
        lead.voters().into_iter().collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );

    let gone = (1..=3).find(|id| *id != leader).unwrap();
    lead.remove_voter(gone).await.unwrap();
    assert!(!lead.voters().contains(&gone));
    assert_eq!(lead.propose(director(2)).await.unwrap(), Response::Ok);
    until("node 4 to follow", || n4.state().directors.len() == 2).await;
    assert!(matches!(
        lead.remove_voter(99).await,
        Err(consensus::ConsensusError::Config(_))
    ));
    for n in nodes {
        n.shutdown().await.unwrap();
    }
    n4.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_data_directors_and_a_witness_survive_the_loss_of_one_director() {
    use consensus::state::{Director, Role};
    let dir = tempfile::tempdir().unwrap();
    let voters = loopback_voters(3);
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(id, &voters, dir.path()).await);
    }
    nodes[0].wait_for_leader(WAIT).await.unwrap();
    let refs: Vec<&Node> = nodes.iter().collect();
    for (id, role) in [(1, Role::Data), (2, Role::Data), (3, Role::Witness)] {
        let cmd = Command::PutDirector(Director {
            id,
            name: format!("d{id}"),
            address: voters[&id].clone(),
            role,
        });
        assert_eq!(propose(&refs, cmd).await, Response::Ok);
    }
    // Lose a data director (whichever is not leading, or director 1).
    let leader = nodes[0].leader().unwrap();
    let lost = if leader == 1 { 2 } else { 1 };
    let idx = nodes.iter().position(|n| n.id() == lost).unwrap();
    nodes.remove(idx).shutdown().await.unwrap();
    // The surviving data director and the witness still commit.
    let refs: Vec<&Node> = nodes.iter().collect();
    assert_eq!(
        propose(
            &refs,
            Command::SetDraining {
                director: lost,
                draining: true
            }
        )
        .await,
        Response::Ok
    );
    for n in &nodes {
        until("the drain to replicate", || {
            n.state().draining.contains_key(&lost)
        })
        .await;
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// A follower that was away while the leader committed megabytes of log
/// catches up, although openraft gives each AppendEntries call only one
/// heartbeat interval (40 ms) and the backlog takes far longer than that to
/// encode, send and store in one request (the transport sends it in
/// prefixes that fit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_on_a_backlog_too_big_for_one_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let voters = loopback_voters(3);
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(id, &voters, dir.path()).await);
    }
    for n in &nodes {
        n.wait_for_leader(WAIT).await.unwrap();
    }
    let leader = nodes[0].leader().unwrap();
    let idx = nodes.iter().position(|n| n.id() != leader).unwrap();
    let away = nodes.remove(idx);
    let away_id = away.id();
    away.shutdown().await.unwrap();
    // 300 entries of about 100 KB each (openraft's default maximum of
    // entries per request): 30 MB that one request cannot carry in 40 ms.
    // Each rewrites the same director, so the state itself stays small.
    let refs: Vec<&Node> = nodes.iter().collect();
    let last = 300;
    for i in 1..=last {
        let cmd = Command::PutDirector(Director {
            id: 1,
            name: format!("{i}-{}", "x".repeat(100_000)),
            address: "10.10.0.11:7946".into(),
            role: Role::Data,
        });
        assert_eq!(propose(&refs, cmd).await, Response::Ok);
    }
    let back = start(away_id, &voters, dir.path()).await;
    let done = format!("{last}-");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !back
        .state()
        .directors
        .get(&1)
        .is_some_and(|d| d.name.starts_with(&done))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the follower did not catch up within 60 s: applied {:?} of {:?}",
            back.metrics().last_applied,
            nodes[0].metrics().last_log_index
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
    back.shutdown().await.unwrap();
}
