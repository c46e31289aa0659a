//! Mutual TLS on the Raft transport: directors with certificates from the
//! cluster's CA form a group; a peer without a valid certificate (another CA,
//! or plain TCP) is rejected and learns nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use consensus::network::Peer;
use consensus::state::{Director, Role};
use consensus::tls::Tls;
use consensus::{
    Command, Faults, LeaseTiming, Node, NodeConfig, NodeId, Security, Timing, TlsFiles,
};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A CA and a function that issues node certificates for 127.0.0.1.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// Writes ca.pem, NAME.pem and NAME.key into `dir`.
    fn issue(&self, dir: &Path, name: &str) -> TlsFiles {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let files = TlsFiles {
            ca: dir.join(format!("{name}-ca.pem")),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.ca, self.cert.pem()).unwrap();
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }
}

async fn start(
    id: NodeId,
    voters: &BTreeMap<NodeId, String>,
    listener: TcpListener,
    dir: &Path,
    files: TlsFiles,
) -> Node {
    Node::start(
        NodeConfig {
            id,
            voters: voters.clone(),
            data_dir: dir.join(format!("n{id}")),
            timing: Timing::default(),
            lease: LeaseTiming::default(),
            faults: Arc::new(Faults::default()),
            security: Security::Mutual(files),
        },
        listener,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_the_cluster_ca_form_a_group_and_others_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let rogue_ca = Ca::new();
    let mut voters = BTreeMap::new();
    let mut listeners = Vec::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        voters.insert(id, l.local_addr().unwrap().to_string());
        listeners.push(l);
    }
    let mut listeners = listeners.into_iter();
    // Nodes 1 and 2 are genuine; node 3 has a certificate from another CA.
    let n1 = start(
        1,
        &voters,
        listeners.next().unwrap(),
        dir.path(),
        ca.issue(dir.path(), "n1"),
    )
    .await;
    let n2 = start(
        2,
        &voters,
        listeners.next().unwrap(),
        dir.path(),
        ca.issue(dir.path(), "n2"),
    )
    .await;
    let n3 = start(
        3,
        &voters,
        listeners.next().unwrap(),
        dir.path(),
        rogue_ca.issue(dir.path(), "n3"),
    )
    .await;

    let leader = n1.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    assert!(leader == 1 || leader == 2, "leader {leader}");
    let on = if leader == 1 { &n1 } else { &n2 };
    on.propose(Command::PutDirector(Director {
        id: 1,
        name: "d1".into(),
        address: voters[&1].clone(),
        role: Role::Data,
    }))
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while n2.state().directors.is_empty() || n1.state().directors.is_empty() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The node with a foreign certificate never hears the group.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(n3.state().directors.is_empty());
    assert_eq!(n3.leader(), None);
    assert!(!n3.holds_lease());

    // A client with a foreign certificate gets no answer.
    let rogue = Tls::load(&Security::Mutual(rogue_ca.issue(dir.path(), "rogue"))).unwrap();
    let mut peer = Peer::new(
        9,
        leader,
        voters[&leader].clone(),
        Default::default(),
        rogue,
    );
    assert!(peer.renew_lease(Duration::from_secs(2)).await.is_err());
    // Plain TCP gets no answer either.
    let mut tcp = tokio::net::TcpStream::connect(&voters[&leader])
        .await
        .unwrap();
    let body = br#"{"from":9,"request":"Lease"}"#;
    tcp.write_all(&(body.len() as u32).to_be_bytes())
        .await
        .unwrap();
    tcp.write_all(body).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf))
        .await
        .map(|r| r.unwrap_or(0))
        .unwrap_or(0);
    assert!(
        !String::from_utf8_lossy(&buf[..n]).contains("Lease"),
        "a plaintext peer got a reply"
    );
    // A genuine client is answered.
    let good = Tls::load(&Security::Mutual(ca.issue(dir.path(), "good"))).unwrap();
    let mut peer = Peer::new(1, leader, voters[&leader].clone(), Default::default(), good);
    assert!(peer.renew_lease(Duration::from_secs(2)).await.is_ok());

    for n in [n1, n2, n3] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn unreadable_certificates_are_a_configuration_error() {
    let err = Tls::load(&Security::Mutual(TlsFiles {
        ca: "/nonexistent/ca.pem".into(),
        cert: "/nonexistent/d1.pem".into(),
        key: "/nonexistent/d1.key".into(),
    }))
    .unwrap_err();
    assert!(
        err.contains("reading the CA certificate /nonexistent/ca.pem"),
        "{err}"
    );
}
