//! Against the real kernel: every operation of the client, cross-checked with
//! `ipvsadm` both ways. Each test runs in a network namespace of its own (IPVS
//! tables are per namespace). They need root and a kernel with IPVS, so a plain
//! `cargo test` skips them; `cargo xtask test` runs them in the VM.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on what it cannot set up"
)]

use std::future::Future;
use std::net::IpAddr;
use std::process::Command;

use ipvs_sys::*;

/// Runs `f` in a fresh network namespace with a LAN-like interface, on a
/// runtime of this thread (namespaces belong to threads; children inherit it).
fn in_netns<F: Future>(f: impl FnOnce() -> F) -> F::Output {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    for cmd in [
        "modprobe ip_vs",
        "for s in rr wrr lc wlc lblc lblcr dh sh sed nq mh fo ovf twos; do modprobe -q ip_vs_$s || true; done",
        "ip link set lo up",
        "ip link add lan0 type dummy",
        "ip addr add 10.10.0.1/24 dev lan0",
        "ip addr add fd10:10::1/64 dev lan0 nodad",
        "ip link set lan0 up",
    ] {
        sh(cmd);
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f())
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ipvsadm -Sn` as a sorted list of rules.
fn ipvsadm_rules() -> Vec<String> {
    let mut rules: Vec<String> = sh("ipvsadm -Sn")
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    rules.sort();
    rules
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
#[ignore = "needs root and a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn info_matches_ipvsadm() {
    in_netns(|| async {
        let ipvs = IpvsHandle::connect().await.unwrap();
        let info = ipvs.info().await.unwrap();
        assert_eq!(info.version, 0x010201);
        let first = sh("ipvsadm -Ln");
        assert_eq!(first.lines().next().unwrap(), info.to_string());
    });
}

#[test]
#[ignore = "needs root and a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn what_we_write_ipvsadm_lists() {
    in_netns(|| async {
        let ipvs = IpvsHandle::connect().await.unwrap();
        let web = ServiceKey::tcp(ip("10.10.0.200"), 80);
        let dns = ServiceKey::udp(ip("10.10.0.201"), 53);
        let v6 = ServiceKey::tcp(ip("fd10:10::200"), 443);
        let sctp = ServiceKey::Addr {
            protocol: Protocol::Sctp,
            addr: ip("10.10.0.202"),
            port: 3868,
        };
        let mark = ServiceKey::Fwmark {
            family: Family::V6,
            mark: 9,
        };
        ipvs.add_service(&Service::new(web, "rr")).await.unwrap();
        ipvs.add_service(&Service {
            flags: ServiceFlags::PERSISTENT
                .with(ServiceFlags::SCHED1)
                .with(ServiceFlags::SCHED2),
            timeout: 300,
            netmask: Netmask::V4("255.255.255.0".parse().unwrap()),
            ..Service::new(dns, "sh")
        })
        .await
        .unwrap();
        ipvs.add_service(&Service {
            flags: ServiceFlags::SCHED2,
            ..Service::new(v6, "mh")
        })
        .await
        .unwrap();
        ipvs.add_service(&Service::new(sctp, "lc")).await.unwrap();
        ipvs.add_service(&Service::new(mark, "wlc")).await.unwrap();

        ipvs.add_destination(
            &web,
            &Destination::new(ip("10.10.0.21"), 30080, Forward::Masquerade),
        )
        .await
        .unwrap();
        ipvs.add_destination(
            &web,
            &Destination {
                weight: 3,
                upper_threshold: 100,
                lower_threshold: 10,
                ..Destination::new(ip("10.10.0.22"), 30080, Forward::DirectRoute)
            },
        )
        .await
        .unwrap();
        ipvs.add_destination(
            &dns,
            &Destination::new(
                ip("10.10.0.23"),
                53,
                Forward::Tunnel(Tunnel {
                    kind: TunnelType::Gue,
                    port: 6080,
                    flags: 1,
                }),
            ),
        )
        .await
        .unwrap();
        // Mixed families: an IPv6 service tunnelling to an IPv4 node.
        ipvs.add_destination(
            &v6,
            &Destination::new(ip("10.10.0.24"), 443, Forward::Tunnel(Tunnel::default())),
        )
        .await
        .unwrap();
        ipvs.add_destination(
            &v6,
            &Destination::new(ip("fd10:10::21"), 443, Forward::Masquerade),
        )
        .await
        .unwrap();

        assert_eq!(
            ipvsadm_rules(),
            sorted(&[
                "-A -t 10.10.0.200:80 -s rr",
                "-a -t 10.10.0.200:80 -r 10.10.0.21:30080 -m -w 1",
                "-a -t 10.10.0.200:80 -r 10.10.0.22:30080 -g -w 3",
                "-A -u 10.10.0.201:53 -s sh -p 300 -M 255.255.255.0 -b sh-fallback,sh-port",
                "-a -u 10.10.0.201:53 -r 10.10.0.23:53 -i -w 1 --tun-type gue --tun-port 6080 --tun-csum",
                "-A -t [fd10:10::200]:443 -s mh -b mh-port",
                "-a -t [fd10:10::200]:443 -r 10.10.0.24:443 -i -w 1 --tun-type ipip",
                "-a -t [fd10:10::200]:443 -r [fd10:10::21]:443 -m -w 1",
                "-A --sctp-service 10.10.0.202:3868 -s lc",
                "-A -f 9 -6 -s wlc",
            ])
        );
        // `ipvsadm -S` leaves thresholds out; the threshold listing has them.
        let listed = sh("ipvsadm -Ln --thresholds -t 10.10.0.200:80");
        let line = listed
            .lines()
            .find(|l| l.contains("10.10.0.22:30080"))
            .unwrap();
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[2..4], ["100", "10"], "{listed}");
    });
}

#[test]
#[ignore = "needs root and a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn what_ipvsadm_writes_we_read_identically() {
    in_netns(|| async {
        sh("printf '%s\\n' \
            '-A -t 10.10.0.200:80 -s wrr -p 120' \
            '-a -t 10.10.0.200:80 -r 10.10.0.21:30080 -m -w 2' \
            '-a -t 10.10.0.200:80 -r 10.10.0.22:30080 -m -w 0' \
            '-A -u [fd10:10::201]:53 -s sh -b sh-port' \
            '-a -u [fd10:10::201]:53 -r [fd10:10::21]:53 -g -w 1 -x 5 -y 1' \
            '-A -f 3 -s dh' \
            | ipvsadm -R");
        let ipvs = IpvsHandle::connect().await.unwrap();
        let mut table = ipvs.table().await.unwrap();
        table.sort_by_key(|e| e.0.key);
        assert_eq!(table.len(), 3);

        let web = table
            .iter()
            .find(|e| e.0.key == ServiceKey::tcp(ip("10.10.0.200"), 80))
            .unwrap();
        assert_eq!(web.0.scheduler, "wrr");
        assert_eq!(web.0.flags, ServiceFlags::PERSISTENT);
        assert_eq!(web.0.timeout, 120);
        assert_eq!(web.0.netmask, Netmask::host(Family::V4));
        let mut weights: Vec<(IpAddr, i32, Forward)> = web
            .1
            .iter()
            .map(|d| (d.addr, d.weight, d.forward))
            .collect();
        weights.sort();
        assert_eq!(
            weights,
            vec![
                (ip("10.10.0.21"), 2, Forward::Masquerade),
                (ip("10.10.0.22"), 0, Forward::Masquerade)
            ]
        );
        let dns = table
            .iter()
            .find(|e| e.0.key == ServiceKey::udp(ip("fd10:10::201"), 53))
            .unwrap();
        assert_eq!(
            (dns.0.scheduler.as_str(), dns.0.flags),
            ("sh", ServiceFlags::SCHED2)
        );
        assert_eq!(
            (
                dns.1[0].addr,
                dns.1[0].forward,
                dns.1[0].upper_threshold,
                dns.1[0].lower_threshold
            ),
            (ip("fd10:10::21"), Forward::DirectRoute, 5, 1)
        );
        assert!(table.iter().any(|e| e.0.key
            == ServiceKey::Fwmark {
                family: Family::V4,
                mark: 3
            }
            && e.0.scheduler == "dh"));
        // One service read alone equals its entry in the dump.
        let single = ipvs.service(&web.0.key).await.unwrap();
        assert_eq!(
            (single.key, single.scheduler.as_str(), single.timeout),
            (web.0.key, "wrr", 120)
        );
    });
}

#[test]
#[ignore = "needs root and a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn edits_happen_in_place_and_deletes_and_flush_work() {
    in_netns(|| async {
        let ipvs = IpvsHandle::connect().await.unwrap();
        let web = ServiceKey::tcp(ip("10.10.0.200"), 80);
        ipvs.add_service(&Service::new(web, "rr")).await.unwrap();
        let d1 = Destination::new(ip("10.10.0.21"), 30080, Forward::Masquerade);
        let d2 = Destination::new(ip("10.10.0.22"), 30080, Forward::Masquerade);
        ipvs.add_destination(&web, &d1).await.unwrap();
        ipvs.add_destination(&web, &d2).await.unwrap();

        ipvs.edit_service(&Service {
            flags: ServiceFlags::PERSISTENT,
            timeout: 30,
            ..Service::new(web, "lc")
        })
        .await
        .unwrap();
        ipvs.edit_destination(
            &web,
            &Destination {
                weight: 7,
                ..d1.clone()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            ipvsadm_rules(),
            sorted(&[
                "-A -t 10.10.0.200:80 -s lc -p 30",
                "-a -t 10.10.0.200:80 -r 10.10.0.21:30080 -m -w 7",
                "-a -t 10.10.0.200:80 -r 10.10.0.22:30080 -m -w 1",
            ])
        );
        ipvs.zero(Some(&web)).await.unwrap();
        ipvs.zero(None).await.unwrap();
        ipvs.del_destination(&web, d2.addr, d2.port).await.unwrap();
        assert_eq!(ipvs.destinations(&web).await.unwrap().len(), 1);
        ipvs.del_service(&web).await.unwrap();
        assert!(ipvs.services().await.unwrap().is_empty());

        sh("ipvsadm -A -t 10.10.0.9:1 -s rr && ipvsadm -A -u 10.10.0.9:2 -s rr");
        ipvs.flush().await.unwrap();
        assert_eq!(ipvsadm_rules(), Vec::<String>::new());
    });
}

#[test]
#[ignore = "needs root and a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn kernel_errors_name_the_operation_and_keep_the_errno() {
    in_netns(|| async {
        let ipvs = IpvsHandle::connect().await.unwrap();
        let web = ServiceKey::tcp(ip("10.10.0.200"), 80);
        let missing = ServiceKey::tcp(ip("10.10.0.201"), 80);
        ipvs.add_service(&Service::new(web, "rr")).await.unwrap();

        let e = ipvs
            .add_service(&Service::new(web, "rr"))
            .await
            .unwrap_err();
        assert_eq!((e.kind(), e.errno()), (Some(ErrorKind::Exists), Some(17)));
        assert_eq!(
            e.to_string(),
            "adding service TCP 10.10.0.200:80: it exists already (errno 17)"
        );
        let e = ipvs.del_service(&missing).await.unwrap_err();
        assert_eq!(e.kind(), Some(ErrorKind::NoSuchService), "{e}");
        let e = ipvs
            .add_service(&Service::new(missing, "nosuch"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), Some(ErrorKind::NoSuchScheduler), "{e}");
        let e = ipvs
            .del_destination(&web, ip("10.10.0.99"), 1)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), Some(ErrorKind::NoSuchDestination), "{e}");
        assert!(
            e.to_string().contains("10.10.0.99:1 of TCP 10.10.0.200:80"),
            "{e}"
        );
        let d = Destination::new(ip("10.10.0.21"), 1, Forward::Masquerade);
        ipvs.add_destination(&web, &d).await.unwrap();
        let e = ipvs.add_destination(&web, &d).await.unwrap_err();
        assert_eq!(e.kind(), Some(ErrorKind::Exists), "{e}");
        assert!(!e.is_retryable());
        // Nothing above changed what exists.
        assert_eq!(
            ipvsadm_rules(),
            sorted(&[
                "-A -t 10.10.0.200:80 -s rr",
                "-a -t 10.10.0.200:80 -r 10.10.0.21:1 -m -w 1"
            ])
        );
    });
}

#[test]
#[ignore = "needs root and a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn timeouts_round_trip_with_ipvsadm() {
    in_netns(|| async {
        let ipvs = IpvsHandle::connect().await.unwrap();
        ipvs.set_timeouts(&Timeouts {
            tcp: 900,
            tcp_fin: 60,
            udp: 200,
        })
        .await
        .unwrap();
        assert_eq!(
            sh("ipvsadm -L --timeout").trim(),
            "Timeout (tcp tcpfin udp): 900 60 200"
        );
        sh("ipvsadm --set 800 0 0");
        let t = ipvs.timeouts().await.unwrap();
        assert_eq!((t.tcp, t.tcp_fin, t.udp), (800, 60, 200));
    });
}

#[test]
#[ignore = "needs root and a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn sync_daemons_start_list_and_stop() {
    in_netns(|| async {
        let ipvs = IpvsHandle::connect().await.unwrap();
        ipvs.start_sync_daemon(&SyncDaemon {
            state: SyncState::Master,
            interface: "lan0".into(),
            sync_id: 7,
            max_len: Some(1400),
            group: Some(ip("239.10.10.81")),
            port: Some(8849),
            ttl: Some(2),
        })
        .await
        .unwrap();
        sh("ipvsadm --start-daemon backup --mcast-interface lan0 --syncid 7");
        let mut daemons = ipvs.sync_daemons().await.unwrap();
        daemons.sort_by_key(|d| d.state.number());
        assert_eq!(daemons.len(), 2, "{daemons:?}");
        assert_eq!(
            (
                daemons[0].state,
                daemons[0].interface.as_str(),
                daemons[0].sync_id
            ),
            (SyncState::Master, "lan0", 7)
        );
        assert_eq!(daemons[0].group, Some(ip("239.10.10.81")));
        assert_eq!(
            (daemons[0].port, daemons[0].ttl, daemons[0].max_len),
            (Some(8849), Some(2), Some(1400))
        );
        assert_eq!(daemons[1].state, SyncState::Backup);
        let listed = sh("ipvsadm -L --daemon");
        assert!(
            listed.contains("master sync daemon (mcast=lan0, syncid=7"),
            "{listed}"
        );
        ipvs.stop_sync_daemon(SyncState::Master).await.unwrap();
        ipvs.stop_sync_daemon(SyncState::Backup).await.unwrap();
        assert!(ipvs.sync_daemons().await.unwrap().is_empty());
    });
}

#[test]
#[ignore = "needs root and a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn a_pipelined_batch_programs_a_thousand_services() {
    in_netns(|| async {
        let ipvs = IpvsHandle::connect().await.unwrap();
        let mut changes = Vec::new();
        for i in 0..1000u32 {
            let key = ServiceKey::tcp(IpAddr::V4(std::net::Ipv4Addr::from(0x0a14_0000 + i)), 80);
            changes.push(Change::AddService(Service::new(key, "rr")));
            for n in 21..23u8 {
                changes.push(Change::AddDest(
                    key,
                    Destination::new(ip(&format!("10.10.0.{n}")), 30080, Forward::Masquerade),
                ));
            }
        }
        let results = ipvs.execute(&changes, DEFAULT_WINDOW).await;
        assert!(
            results.iter().all(|r| r.is_ok()),
            "{:?}",
            results.iter().find(|r| r.is_err())
        );
        let table = ipvs.table().await.unwrap();
        assert_eq!(table.len(), 1000);
        assert!(table.iter().all(|(_, d)| d.len() == 2));
        assert_eq!(sh("ipvsadm -Sn | grep -c -- '-a '").trim(), "2000");
    });
}

#[test]
#[ignore = "needs root and a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn a_batch_reports_each_refusal_at_its_change_and_makes_the_others() {
    in_netns(|| async {
        let ipvs = IpvsHandle::connect().await.unwrap();
        let web = ServiceKey::tcp(ip("10.10.0.200"), 80);
        let missing = ServiceKey::tcp(ip("10.10.0.201"), 80);
        let d = |n: u8| Destination::new(ip(&format!("10.10.0.{n}")), 30080, Forward::Masquerade);
        // Refusals in the middle of a datagram and as its last message, with
        // windows that split the list differently.
        let changes = vec![
            Change::AddService(Service::new(web, "rr")),
            Change::AddDest(web, d(21)),
            Change::AddDest(web, d(21)),
            Change::AddDest(missing, d(22)),
            Change::AddDest(web, d(22)),
            Change::DelDest(web, ip("10.10.0.99"), 1),
        ];
        for window in [1, 2, 4, DEFAULT_WINDOW] {
            sh("ipvsadm -C");
            let results = ipvs.execute(&changes, window).await;
            let kinds: Vec<Option<ErrorKind>> = results
                .iter()
                .map(|r| r.as_ref().err().map(|e| e.kind().unwrap()))
                .collect();
            assert_eq!(
                kinds,
                vec![
                    None,
                    None,
                    Some(ErrorKind::Exists),
                    Some(ErrorKind::NoSuchService),
                    None,
                    Some(ErrorKind::NoSuchDestination),
                ],
                "window {window}"
            );
            assert_eq!(
                results[2].as_ref().unwrap_err().to_string(),
                "adding destination 10.10.0.21:30080 of TCP 10.10.0.200:80: it exists already (errno 17)"
            );
            assert_eq!(
                ipvsadm_rules(),
                sorted(&[
                    "-A -t 10.10.0.200:80 -s rr",
                    "-a -t 10.10.0.200:80 -r 10.10.0.21:30080 -m -w 1",
                    "-a -t 10.10.0.200:80 -r 10.10.0.22:30080 -m -w 1",
                ]),
                "window {window}"
            );
        }
    });
}

#[test]
#[ignore = "needs root and a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn a_table_read_dropped_halfway_leaves_the_handle_usable() {
    in_netns(|| async {
        let ipvs = IpvsHandle::connect().await.unwrap();
        let mut changes = Vec::new();
        for i in 0..300u32 {
            let key = ServiceKey::tcp(IpAddr::V4(std::net::Ipv4Addr::from(0x0a14_0000 + i)), 80);
            changes.push(Change::AddService(Service::new(key, "rr")));
        }
        assert!(ipvs
            .execute(&changes, DEFAULT_WINDOW)
            .await
            .iter()
            .all(|r| r.is_ok()));
        // Poll a table read once or twice, then drop it mid-way.
        let mut table = Box::pin(ipvs.table());
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(table.as_mut().poll(&mut cx).is_pending());
        drop(table);
        let table = ipvs.table().await.unwrap();
        assert_eq!(table.len(), 300);
    });
}
