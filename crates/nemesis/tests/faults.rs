//! The fault machinery bites: firewall rules really cut namespaces apart and healing really
//! restores them, the proxy really delays, teardown really removes everything. Without these,
//! a nemesis run could pass because its faults silently did nothing.

use nemesis::net::{Direction, Firewall, Network};
use nemesis::proxy::{LinkProxy, NsRuntime};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROBE: Duration = Duration::from_millis(700);

/// The network, or `None` after a loud message (a failure if `RAFTKV_REQUIRE_NETNS=1`).
fn network_or_skip(test: &str) -> Option<Network> {
    network_with_or_skip(test, None)
}

/// As [`network_or_skip`], with the firewall tool `only` if given.
fn network_with_or_skip(test: &str, only: Option<Firewall>) -> Option<Network> {
    match Network::create_with(3, |f| only.map_or(true, |o| o == f)) {
        Ok(n) => Some(n),
        Err(e) => {
            if std::env::var("RAFTKV_REQUIRE_NETNS").is_ok_and(|v| v == "1") {
                panic!("network namespaces required but unavailable: {e}");
            }
            eprintln!("NEMESIS: network namespaces unavailable ({e}); {test} SKIPPED");
            None
        }
    }
}

fn runtimes(net: &Network) -> Vec<NsRuntime> {
    (0..3)
        .map(|i| NsRuntime::start(net.namespace(i), Some(net.namespace_path(i))).unwrap())
        .collect()
}

/// A listener inside `rt`'s namespace on `ip` that accepts (and drops) connections.
async fn listen(rt: &NsRuntime, ip: IpAddr) -> SocketAddr {
    rt.run(async move {
        let l = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
            .await
            .unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { while l.accept().await.is_ok() {} });
        addr
    })
    .await
    .unwrap()
}

/// Whether a connection from `rt`'s namespace to `target` succeeds within [`PROBE`].
async fn reaches(rt: &NsRuntime, target: SocketAddr) -> bool {
    rt.run(async move {
        matches!(
            tokio::time::timeout(PROBE, tokio::net::TcpStream::connect(target)).await,
            Ok(Ok(_))
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_cut_exactly_the_chosen_directions_and_heal_restores_them_with_iptables() {
    let Some(net) = network_with_or_skip("iptables partition test", Some(Firewall::Iptables))
    else {
        return;
    };
    partitions_cut_and_heal(net).await;
}

/// Regression: nft refused the 100 % loss rule (`numgen random mod 100 < 100`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_cut_exactly_the_chosen_directions_and_heal_restores_them_with_nft() {
    let Some(net) = network_with_or_skip("nft partition test", Some(Firewall::Nft)) else {
        return;
    };
    partitions_cut_and_heal(net).await;
}

async fn partitions_cut_and_heal(net: Network) {
    assert!(net.firewall() == Firewall::Iptables || net.firewall() == Firewall::Nft);
    let rts = runtimes(&net);
    let mut at = Vec::new();
    for (i, rt) in rts.iter().enumerate() {
        at.push(listen(rt, IpAddr::V4(net.store_addr(i))).await);
    }
    assert!(reaches(&rts[1], at[0]).await && reaches(&rts[0], at[1]).await);

    net.partition(0, Direction::Both).unwrap();
    assert!(!reaches(&rts[1], at[0]).await, "1 -> 0 must be cut");
    assert!(!reaches(&rts[0], at[1]).await, "0 -> 1 must be cut");
    assert!(reaches(&rts[1], at[2]).await, "1 -> 2 is not involved");
    // The host (the test's clients) still reaches the partitioned store.
    let host = tokio::time::timeout(PROBE, tokio::net::TcpStream::connect(at[0])).await;
    assert!(
        matches!(host, Ok(Ok(_))),
        "the host must still reach store 0"
    );
    net.heal().unwrap();
    assert!(reaches(&rts[1], at[0]).await, "heal restores 1 -> 0");

    // Inbound only: a TCP handshake needs both directions, so probe with the rule itself:
    // store 0 receives nothing, so neither side can connect.
    net.partition(0, Direction::Inbound).unwrap();
    assert!(!reaches(&rts[1], at[0]).await);
    net.heal().unwrap();
    net.partition(0, Direction::Outbound).unwrap();
    assert!(!reaches(&rts[0], at[1]).await);
    net.heal().unwrap();
    assert!(reaches(&rts[0], at[1]).await);

    // 100 % loss is a partition from everyone, the host included.
    net.loss(0, 100).unwrap();
    assert!(!reaches(&rts[1], at[0]).await);
    let host = tokio::time::timeout(PROBE, tokio::net::TcpStream::connect(at[0])).await;
    assert!(
        !matches!(host, Ok(Ok(_))),
        "100% loss must cut the host too"
    );
    net.heal().unwrap();
    assert!(reaches(&rts[1], at[0]).await);
}

#[test]
fn teardown_leaves_no_namespace_or_interface_behind() {
    let Some(net) = network_or_skip("teardown test") else {
        return;
    };
    let prefix = net.prefix().to_string();
    let names = |cmd: &[&str]| nemesis::net::run_command("ip", cmd).unwrap();
    assert!(names(&["netns", "list"]).contains(&format!("{prefix}n1")));
    drop(net);
    let ours = |text: String| {
        text.lines()
            .filter(|l| l.contains(&format!("{prefix}n")) || l.contains(&format!("{prefix}br")))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(ours(names(&["netns", "list"])), Vec::<String>::new());
    assert_eq!(ours(names(&["-o", "link", "show"])), Vec::<String>::new());
}

/// Sends one byte through `stream` and waits for its echo; returns the round-trip time.
async fn round_trip(stream: &mut tokio::net::TcpStream) -> Duration {
    let start = Instant::now();
    stream.write_all(b"x").await.unwrap();
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut byte))
        .await
        .expect("echo within 5 s")
        .unwrap();
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_adds_its_delay_each_way_and_can_be_changed_while_running() {
    let host = NsRuntime::start("proxy-test", None).unwrap();
    let echo = host
        .run(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
            });
            addr
        })
        .await
        .unwrap();
    let proxy = LinkProxy::start(&host, "127.0.0.1:0".parse().unwrap(), echo)
        .await
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(proxy.listen_addr())
        .await
        .unwrap();
    s.set_nodelay(true).unwrap();
    let fast = round_trip(&mut s).await;
    proxy.set_delay(Duration::from_millis(150));
    let slow = round_trip(&mut s).await;
    assert!(
        slow >= Duration::from_millis(300),
        "150 ms each way must give a round trip of 300 ms or more, got {slow:?}"
    );
    proxy.set_delay(Duration::ZERO);
    let fast_again = round_trip(&mut s).await;
    assert!(
        fast < Duration::from_millis(100) && fast_again < Duration::from_millis(100),
        "without delay: {fast:?}, {fast_again:?}"
    );
}

#[test]
fn leftovers_of_a_dead_run_are_removed_by_the_next_one() {
    // A pid no process has (pid_max is at most 4194304), as if that run had been SIGKILLed.
    let dead = (3_000_000..3_001_000)
        // SAFETY: signal 0 only checks existence.
        .find(|&pid| unsafe { libc::kill(pid, 0) } != 0)
        .expect("a free pid");
    let leftover = format!("rk{dead}zn1");
    if nemesis::net::run_command("ip", &["netns", "add", &leftover]).is_err() {
        let Some(_net) = network_or_skip("leftover test") else {
            return;
        };
        panic!("could not create namespace {leftover} although namespaces work");
    }
    let net = network_or_skip("leftover test");
    let list = nemesis::net::run_command("ip", &["netns", "list"]).unwrap_or_default();
    // Remove it ourselves if the test fails, so it does not outlive the failure.
    if list.contains(&leftover) {
        let _ = nemesis::net::run_command("ip", &["netns", "del", &leftover]);
    }
    if net.is_some() {
        assert!(!list.contains(&leftover), "{leftover} was not removed");
    }
}
