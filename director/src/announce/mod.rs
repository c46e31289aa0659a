//! Speaking for VIPs on the LAN: ARP answers ([`arp`]), neighbour
//! advertisements ([`ndp`]), and the announcement bursts sent when a VIP is
//! taken, when the link comes back and on the optional refresh. Every
//! packet is sent only after the hold rule ([`hold`]) says yes at that
//! moment.
//!
//! The VIP itself is made local without the kernel announcing it (a
//! `local` route, `dataplane::routes`, with `arp_ignore=1`); this process
//! answers for it, so when the process dies the answers stop. Operators
//! see held VIPs in `director status` and `ip route show table local`, not
//! in `ip addr`.

pub mod arp;
pub mod hold;
pub mod ndp;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use self::arp::ArpSocket;

/// How long a responder thread waits for a packet before it looks whether
/// it should stop: its wake-ups at rest, and its delay at shutdown.
pub const READ_TIMEOUT: Duration = Duration::from_millis(500);
use self::hold::HoldRule;
use self::ndp::NdpSocket;
use crate::config::ConfigCell;

/// Why the announcer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Opening the ARP socket failed.
    #[error("opening the ARP socket on {interface}: {source}")]
    ArpSocket {
        /// The interface.
        interface: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Starting a thread failed.
    #[error("starting the {name} thread: {source}")]
    Thread {
        /// The thread.
        name: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// IPv6 VIPs are held but neighbour discovery is unavailable.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// No ICMPv6 socket.
    #[error("IPv6 VIPs are held but neighbour discovery is unavailable")]
    NoNdp,
    /// Joining a solicited-node group failed.
    #[error(transparent)]
    Groups(#[from] ndp::JoinError),
}

/// Whether `interface` has carrier (the kernel's `carrier` is 1; it reads
/// 0 without carrier and fails while the interface is administratively
/// down). Carrier follows the link at once; `operstate` lags behind it.
pub fn link_up(interface: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{interface}/carrier"))
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
}

/// The answering side: threads that reply to ARP requests (IPv4) and
/// neighbour solicitations (IPv6) for held VIPs, and the announcement
/// bursts.
pub struct Announcer {
    tx: Arc<Mutex<Box<dyn pnet_datalink::DataLinkSender>>>,
    ndp: Option<Arc<NdpSocket>>,
    mac: [u8; 6],
    rule: HoldRule,
    /// When each VIP's last announcement burst started.
    announced: Mutex<BTreeMap<IpAddr, SystemTime>>,
    /// Gratuitous ARPs and unsolicited advertisements sent.
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Hands bursts to the one thread that sends them (dropped first at
    /// the end, which ends that thread).
    bursts: Mutex<Option<std::sync::mpsc::Sender<Burst>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// One announcement burst: a packet now and then every `interval` until
/// `count` were sent, each sent only if the hold rule says yes just then.
struct Burst {
    vip: IpAddr,
    count: u32,
    sent: u32,
    interval: Duration,
    /// Sends one packet if the rule allows it now; false when it did not.
    send: Box<dyn Fn() -> bool + Send>,
}

/// The burst thread: sends every burst's packets when they are due (one
/// thread however many VIPs are taken at once; thousands at start).
fn run_bursts(rx: std::sync::mpsc::Receiver<Burst>, sent: Arc<AtomicU64>) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut due: BTreeMap<(std::time::Instant, u64), Burst> = BTreeMap::new();
    let mut seq = 0u64;
    loop {
        let now = std::time::Instant::now();
        let next = match due.first_key_value() {
            Some(((at, _), _)) => rx.recv_timeout(at.saturating_duration_since(now)),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(b) => {
                seq += 1;
                due.insert((std::time::Instant::now(), seq), b);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while let Some(entry) = due.first_entry() {
            if entry.key().0 > std::time::Instant::now() {
                break;
            }
            let mut b = entry.remove();
            if !(b.send)() {
                tracing::info!(vip = %b.vip, sent = b.sent, "announcement stopped: the VIP is no longer held here");
                continue;
            }
            sent.fetch_add(1, Ordering::Relaxed);
            b.sent += 1;
            if b.sent < b.count {
                seq += 1;
                due.insert((std::time::Instant::now() + b.interval, seq), b);
            }
        }
    }
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer").field("mac", &self.mac).finish()
    }
}

impl Announcer {
    /// Opens the ARP socket (and, when IPv6 is up on it, the ICMPv6 socket)
    /// on `interface` and starts answering for what `rule` holds.
    pub fn start(interface: &str, rule: HoldRule) -> Result<Announcer, StartError> {
        let ArpSocket { tx, mut rx, mac } =
            ArpSocket::open(interface).map_err(|source| StartError::ArpSocket {
                interface: interface.to_string(),
                source,
            })?;
        let tx = Arc::new(Mutex::new(tx));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (t, s, r) = (tx.clone(), stop.clone(), rule.clone());
        threads.push(
            std::thread::Builder::new()
                .name("arp".into())
                .spawn(move || {
                    while !s.load(Ordering::Relaxed) {
                        let Some(req) = arp::next_request(rx.as_mut()) else {
                            continue;
                        };
                        if req.sender_ip == req.target_ip {
                            continue; // someone's gratuitous ARP
                        }
                        let frame = arp::reply(mac, req.target_ip, &req);
                        if let Ok(mut tx) = t.lock() {
                            // Asked with the socket in hand: nothing but
                            // the send between the answer and the rule.
                            if r.holds(&IpAddr::V4(req.target_ip)) {
                                let _ = arp::send(tx.as_mut(), &frame);
                            }
                        }
                    }
                })
                .map_err(|source| StartError::Thread {
                    name: "arp",
                    source,
                })?,
        );
        let ndp = match NdpSocket::open(interface) {
            Ok(n) => Some(Arc::new(n)),
            Err(e) => {
                tracing::warn!(%interface, error = %e, "no IPv6 neighbour discovery; IPv6 VIPs are not answered");
                None
            }
        };
        if let Some(n) = ndp.clone() {
            let (s, r) = (stop.clone(), rule.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("ndp".into())
                    .spawn(move || {
                        while !s.load(Ordering::Relaxed) {
                            let Some((from, target)) = n.next_solicitation() else {
                                continue;
                            };
                            if r.holds(&IpAddr::V6(target)) {
                                let _ = n.answer(mac, from, target);
                            }
                        }
                    })
                    .map_err(|source| StartError::Thread {
                        name: "ndp",
                        source,
                    })?,
            );
        }
        let sent = Arc::new(AtomicU64::new(0));
        let (bursts, rx) = std::sync::mpsc::channel();
        let counter = sent.clone();
        threads.push(
            std::thread::Builder::new()
                .name("announce".into())
                .spawn(move || run_bursts(rx, counter))
                .map_err(|source| StartError::Thread {
                    name: "announce",
                    source,
                })?,
        );
        Ok(Announcer {
            tx,
            ndp,
            mac,
            rule,
            announced: Mutex::new(BTreeMap::new()),
            sent,
            stop,
            bursts: Mutex::new(Some(bursts)),
            threads,
        })
    }

    /// The hold rule it answers by.
    pub fn rule(&self) -> &HoldRule {
        &self.rule
    }

    /// Announcement packets sent (gratuitous ARP and unsolicited NA).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Sends an announcement burst for `vip` in the background: gratuitous
    /// ARP for IPv4, unsolicited neighbour advertisements for IPv6. Each
    /// packet asks the hold rule first; the burst ends at the first no (a
    /// director stalled in the middle of a burst, resumed after its lease
    /// ended, sends nothing more for the VIP).
    pub fn announce(&self, vip: IpAddr, count: u32, interval: Duration) {
        if !self.rule.holds(&vip) {
            return;
        }
        if let Ok(mut a) = self.announced.lock() {
            a.insert(vip, SystemTime::now());
        }
        tracing::info!(%vip, packets = count, "announcing");
        let rule = self.rule.clone();
        // Sends one packet if the rule allows it now; false when it did not.
        let send: Box<dyn Fn() -> bool + Send> = match vip {
            IpAddr::V4(v4) => {
                let tx = self.tx.clone();
                let frame = arp::gratuitous(self.mac, v4);
                Box::new(move || {
                    let Ok(mut tx) = tx.lock() else { return false };
                    if !rule.holds(&vip) {
                        return false;
                    }
                    let _ = arp::send(tx.as_mut(), &frame);
                    true
                })
            }
            IpAddr::V6(v6) => match self.ndp.clone() {
                Some(n) => {
                    let mac = self.mac;
                    Box::new(move || {
                        if !rule.holds(&vip) {
                            return false;
                        }
                        let _ = n.announce(mac, v6);
                        true
                    })
                }
                None => return,
            },
        };
        let burst = Burst {
            vip,
            count,
            sent: 0,
            interval,
            send,
        };
        let queued = self
            .bursts
            .lock()
            .ok()
            .and_then(|b| b.as_ref().map(|tx| tx.send(burst).is_ok()));
        if queued != Some(true) {
            tracing::warn!(%vip, "announcement not sent: the announcer is stopping");
        }
    }

    /// Listens for neighbour solicitations of the IPv6 VIPs in `held`.
    pub fn listen_for(&self, held: &BTreeSet<IpAddr>) -> Result<(), ListenError> {
        let v6: BTreeSet<Ipv6Addr> = held
            .iter()
            .filter_map(|v| match v {
                IpAddr::V6(a) => Some(*a),
                IpAddr::V4(_) => None,
            })
            .collect();
        match &self.ndp {
            Some(n) => n.set_groups(&v6).map_err(ListenError::Groups),
            None if v6.is_empty() => Ok(()),
            None => Err(ListenError::NoNdp),
        }
    }

    /// When the last announcement burst for `vip` started, if any.
    pub fn last_announced(&self, vip: IpAddr) -> Option<SystemTime> {
        self.announced.lock().ok()?.get(&vip).copied()
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Ends the burst thread.
        if let Ok(mut b) = self.bursts.lock() {
            b.take();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Announces again what is held when the link comes back (a cable, a
/// switch port, a VM migration: switches and neighbours may have forgotten
/// the MAC), and, with `announce.refresh_s`, once per VIP every so often.
pub async fn link_watch(
    announcer: Arc<Announcer>,
    config: Arc<ConfigCell>,
    mut stop: watch::Receiver<bool>,
) {
    let mut was_up = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => return,
        }
        let c = config.get();
        let up = link_up(&c.interface);
        if up != was_up.unwrap_or(up) {
            tracing::info!(interface = %c.interface, up, "link {}", if up { "up" } else { "down" });
        }
        let came_back = up && was_up == Some(false);
        was_up = Some(up);
        if !came_back && c.announce.refresh_s == 0 {
            continue;
        }
        let every = Duration::from_secs(c.announce.refresh_s);
        for vip in announcer.rule().held() {
            if came_back {
                announcer.announce(
                    vip,
                    c.announce.count,
                    Duration::from_millis(c.announce.interval_ms),
                );
            } else if announcer
                .last_announced(vip)
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age >= every)
            {
                announcer.announce(vip, 1, Duration::ZERO);
            }
        }
    }
}
