//! Network namespaces for the stores: one bridge on the host, one namespace per store joined to
//! it by a veth pair, all addressed from 127.0.0.0/8 (never a private or public range, so a
//! mistake can never leak traffic off the machine), and a firewall (iptables, else nft) inside
//! each namespace for partitions and loss.
//!
//! Names carry the test's pid (`rk{pid}n1`, `rk{pid}br`, ...) so parallel runs do not collide.
//! Leftovers of the same names, and of runs whose pid is dead, are removed before creating
//! anything; [`Network`] removes everything again on drop.
//!
//! Why 127.x works across interfaces: with `route_localnet` set on the interface, Linux routes
//! and accepts loopback-range addresses on it, and because the host has no policy rules of its
//! own the local and main routing tables are one trie, so the bridge's `/24` wins over `lo`'s
//! `/8` by longest prefix. [`crate::cluster`] checks connectivity before any server starts.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a single `ip`/`iptables`/`nft`/`sysctl` command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Name prefix of everything this module creates.
const NAME_PREFIX: &str = "rk";
/// Second octets tried for the run's 127.X.Y.0/24 subnet.
const SUBNET_OCTET_FIRST: u8 = 100;
const SUBNET_CANDIDATES: u32 = 100 * 256;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Namespaces cannot be used here (not root, no `ip`, no firewall tool, no connectivity).
    #[error("{0}")]
    Unavailable(String),
    /// A command failed after the network was set up (a fault could not be applied).
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
}

/// Runs `program args` with a bounded wait; returns stdout, or an error with stderr.
pub fn run_command(program: &str, args: &[&str]) -> Result<String, NetError> {
    let rendered = format!("{program} {}", args.join(" "));
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Command {
            command: rendered.clone(),
            detail: e.to_string(),
        })?;
    let pid = child.id();
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    // wait_with_output blocks without a bound, so a watchdog thread kills the command if it
    // outlives the deadline (the pid cannot be reused before we reap it below).
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_err()
        {
            // SAFETY: signalling our own unreaped child.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    });
    let output = child.wait_with_output();
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let output = output.map_err(|e| NetError::Command {
        command: rendered.clone(),
        detail: e.to_string(),
    })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(NetError::Command {
            command: rendered,
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}

/// Which tool programs the firewalls inside the namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firewall {
    Iptables,
    Nft,
}

fn tool_works(program: &str, args: &[&str]) -> bool {
    run_command(program, args).is_ok()
}

/// A partition's direction as seen from the victim store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The victim receives nothing from its peers.
    Inbound,
    /// The victim's packets to its peers are dropped.
    Outbound,
    Both,
}

/// The bridge, the namespaces and their addresses. Dropping it removes them.
#[derive(Debug)]
pub struct Network {
    prefix: String,
    bridge: String,
    namespaces: Vec<String>,
    host_veths: Vec<String>,
    host_addr: Ipv4Addr,
    store_addrs: Vec<Ipv4Addr>,
    firewall: Firewall,
    torn_down: bool,
}

/// `rk{pid}{letter}`: the prefix of every name of one [`Network`]; the letter tells apart
/// several networks of one process (tests run in parallel threads).
fn prefix_for(pid: u32, sequence: u32) -> String {
    let letter = char::from(b'a' + (sequence % 26) as u8);
    format!("{NAME_PREFIX}{pid}{letter}")
}

/// The pid and prefix that `name` (`rk{pid}{letter}` then `n<i>`, `br` or `v<i>`) belongs to.
fn owner_of(name: &str) -> Option<(u32, &str)> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
    let pid = rest[..digits].parse().ok()?;
    let tail = &rest[digits..];
    let mut chars = tail.chars();
    if !chars.next()?.is_ascii_lowercase() {
        return None;
    }
    let kind = chars.as_str();
    if !(kind == "br" || kind.starts_with('n') || kind.starts_with('v')) {
        return None;
    }
    Some((pid, &name[..NAME_PREFIX.len() + digits + 1]))
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks existence and permission.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// Removes namespaces and interfaces with our exact prefix, and those of runs whose pid is
/// dead (a run that crashed or was killed before its Drop ran).
fn remove_leftovers(own_prefix: &str) {
    let stale = |name: &str| match owner_of(name) {
        Some((pid, prefix)) => prefix == own_prefix || !pid_alive(pid),
        None => false,
    };
    if let Ok(list) = run_command("ip", &["netns", "list"]) {
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if stale(name) {
                let _ = run_command("ip", &["netns", "del", name]);
            }
        }
    }
    if let Ok(list) = run_command("ip", &["-o", "link", "show"]) {
        for line in list.lines() {
            // "7: rk123abr: <...>" or "8: rk123av1@if2: <...>"
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or("");
            if stale(name) {
                let _ = run_command("ip", &["link", "del", name]);
            }
        }
    }
}

/// A 127.X.Y.0/24 subnet no interface on the host uses yet, starting from one derived from
/// `seed` (pid and sequence) so that parallel runs usually pick different ones at once.
fn free_subnet(seed: u32) -> Result<(u8, u8), NetError> {
    let used = run_command("ip", &["-4", "-o", "addr", "show"])
        .map_err(|e| NetError::Unavailable(format!("cannot list addresses: {e}")))?;
    for offset in 0..SUBNET_CANDIDATES {
        let n = (seed.wrapping_mul(2_654_435_761).wrapping_add(offset)) % SUBNET_CANDIDATES;
        let (x, y) = (SUBNET_OCTET_FIRST + (n / 256) as u8, (n % 256) as u8);
        if !used.contains(&format!(" 127.{x}.{y}.")) {
            return Ok((x, y));
        }
    }
    Err(NetError::Unavailable("no free 127.x.y.0/24 subnet".into()))
}

impl Network {
    /// Creates the bridge and `stores` namespaces, or says why it cannot.
    pub fn create(stores: usize) -> Result<Network, NetError> {
        // NEMESIS_FIREWALL=nft (or iptables) forces one, so both can be tested here; `none`
        // pretends neither exists, to exercise the process-faults-only fallback.
        let forced = std::env::var("NEMESIS_FIREWALL").unwrap_or_default();
        let allowed = |tool: &str| forced.is_empty() || forced == tool;
        Network::create_with(stores, |firewall| match firewall {
            Firewall::Iptables => allowed("iptables"),
            Firewall::Nft => allowed("nft"),
        })
    }

    /// As [`Network::create`], with the first installed firewall tool that `allow`s.
    pub fn create_with(
        stores: usize,
        allow: impl Fn(Firewall) -> bool,
    ) -> Result<Network, NetError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(NetError::Unavailable("not running as root".into()));
        }
        run_command("ip", &["-V"])
            .map_err(|e| NetError::Unavailable(format!("the `ip` tool is unusable: {e}")))?;
        let firewall = if allow(Firewall::Iptables) && tool_works("iptables", &["-V"]) {
            Firewall::Iptables
        } else if allow(Firewall::Nft) && tool_works("nft", &["-v"]) {
            Firewall::Nft
        } else {
            return Err(NetError::Unavailable(
                "neither iptables nor nft is installed (scripts/install-netns-tools.sh installs them)"
                    .into(),
            ));
        };
        static SEQUENCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pid = std::process::id();
        let sequence = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = prefix_for(pid, sequence);
        remove_leftovers(&prefix);
        let (x, y) = free_subnet(pid.wrapping_mul(31).wrapping_add(sequence))?;
        let mut net = Network {
            bridge: format!("{prefix}br"),
            namespaces: (1..=stores).map(|i| format!("{prefix}n{i}")).collect(),
            host_veths: (1..=stores).map(|i| format!("{prefix}v{i}")).collect(),
            prefix,
            host_addr: Ipv4Addr::new(127, x, y, 1),
            store_addrs: (0..stores)
                .map(|i| Ipv4Addr::new(127, x, y, 11 + i as u8))
                .collect(),
            firewall,
            torn_down: false,
        };
        // On any failure `net` is dropped here, which removes what was made.
        net.build()
            .map_err(|e| NetError::Unavailable(format!("cannot build the namespaces: {e}")))?;
        Ok(net)
    }

    fn build(&mut self) -> Result<(), NetError> {
        let br = self.bridge.clone();
        let host_cidr = format!("{}/24", self.host_addr);
        run_command("ip", &["link", "add", &br, "type", "bridge"])?;
        run_command("ip", &["addr", "add", &host_cidr, "dev", &br])?;
        run_command("ip", &["link", "set", &br, "up"])?;
        // Only the bridge: the host's other interfaces keep refusing 127.x on the wire.
        run_command(
            "sysctl",
            &["-qw", &format!("net.ipv4.conf.{br}.route_localnet=1")],
        )?;
        for i in 0..self.namespaces.len() {
            let ns = self.namespaces[i].clone();
            let veth = self.host_veths[i].clone();
            let cidr = format!("{}/24", self.store_addrs[i]);
            run_command("ip", &["netns", "add", &ns])?;
            run_command(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            run_command("ip", &["link", "set", &veth, "master", &br, "up"])?;
            run_command("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            run_command("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            run_command("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run_command(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "sysctl",
                    "-qw",
                    "net.ipv4.conf.all.route_localnet=1",
                    "net.ipv4.conf.eth0.route_localnet=1",
                ],
            )?;
            if self.firewall == Firewall::Nft {
                self.nft(i, &["add table ip nemesis"])?;
                self.nft(
                    i,
                    &["add chain ip nemesis input { type filter hook input priority 0 ; }"],
                )?;
                self.nft(
                    i,
                    &["add chain ip nemesis output { type filter hook output priority 0 ; }"],
                )?;
            }
        }
        Ok(())
    }

    pub fn firewall(&self) -> Firewall {
        self.firewall
    }

    /// The namespace of store `i` (0-based).
    pub fn namespace(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    /// The `/var/run/netns` file of store `i`'s namespace, for `setns`.
    pub fn namespace_path(&self, i: usize) -> String {
        format!("/var/run/netns/{}", self.namespaces[i])
    }

    /// Store `i`'s address on the bridge.
    pub fn store_addr(&self, i: usize) -> Ipv4Addr {
        self.store_addrs[i]
    }

    /// The host's address on the bridge (where connections from the test process come from).
    pub fn host_addr(&self) -> Ipv4Addr {
        self.host_addr
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn iptables(&self, i: usize, args: &[&str]) -> Result<(), NetError> {
        let mut full = vec![
            "netns",
            "exec",
            self.namespaces[i].as_str(),
            "iptables",
            "-w",
        ];
        full.extend_from_slice(args);
        run_command("ip", &full).map(|_| ())
    }

    fn nft(&self, i: usize, rule: &[&str]) -> Result<(), NetError> {
        let mut full = vec!["netns", "exec", self.namespaces[i].as_str(), "nft"];
        let words: Vec<&str> = rule.iter().flat_map(|r| r.split(' ')).collect();
        full.extend(words);
        run_command("ip", &full).map(|_| ())
    }

    /// Drops packets between store `victim` and every other store in `direction` (seen from
    /// the victim). Traffic from the host (the test's clients) still passes: a client can
    /// reach a partitioned store, which then cannot reach the rest, as in real deployments.
    pub fn partition(&self, victim: usize, direction: Direction) -> Result<(), NetError> {
        for other in 0..self.store_addrs.len() {
            if other == victim {
                continue;
            }
            let addr = self.store_addrs[other].to_string();
            let (inbound, outbound) = match direction {
                Direction::Inbound => (true, false),
                Direction::Outbound => (false, true),
                Direction::Both => (true, true),
            };
            match self.firewall {
                Firewall::Iptables => {
                    if inbound {
                        self.iptables(victim, &["-A", "INPUT", "-s", &addr, "-j", "DROP"])?;
                    }
                    if outbound {
                        self.iptables(victim, &["-A", "OUTPUT", "-d", &addr, "-j", "DROP"])?;
                    }
                }
                Firewall::Nft => {
                    if inbound {
                        self.nft(
                            victim,
                            &["add rule ip nemesis input ip saddr", &addr, "drop"],
                        )?;
                    }
                    if outbound {
                        self.nft(
                            victim,
                            &["add rule ip nemesis output ip daddr", &addr, "drop"],
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops `percent`% of the packets arriving at store `victim` on its bridge interface,
    /// from peers and clients alike (loopback inside the namespace is untouched).
    pub fn loss(&self, victim: usize, percent: u32) -> Result<(), NetError> {
        match self.firewall {
            Firewall::Iptables => {
                let probability = format!("{:.2}", f64::from(percent) / 100.0);
                self.iptables(
                    victim,
                    &[
                        "-A",
                        "INPUT",
                        "-i",
                        "eth0",
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &probability,
                        "-j",
                        "DROP",
                    ],
                )
            }
            // `numgen random mod 100` is 0..=99, so nft refuses `< 100`: total loss is a plain drop.
            Firewall::Nft if percent >= 100 => {
                self.nft(victim, &["add rule ip nemesis input iifname eth0 drop"])
            }
            Firewall::Nft => self.nft(
                victim,
                &[
                    "add rule ip nemesis input iifname eth0 numgen random mod 100 <",
                    &percent.to_string(),
                    "drop",
                ],
            ),
        }
    }

    /// Removes every firewall rule in every namespace.
    pub fn heal(&self) -> Result<(), NetError> {
        for i in 0..self.namespaces.len() {
            match self.firewall {
                Firewall::Iptables => {
                    self.iptables(i, &["-F", "INPUT"])?;
                    self.iptables(i, &["-F", "OUTPUT"])?;
                }
                Firewall::Nft => {
                    self.nft(i, &["flush chain ip nemesis input"])?;
                    self.nft(i, &["flush chain ip nemesis output"])?;
                }
            }
        }
        Ok(())
    }

    /// Deletes the namespaces and the bridge; idempotent. Processes inside the namespaces and
    /// threads that entered them must be gone first, or a namespace outlives its name.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for ns in &self.namespaces {
            let _ = run_command("ip", &["netns", "del", ns]);
        }
        // The host ends of the veths go with their peers; deleting them explicitly covers a
        // namespace still pinned by a straggler.
        for veth in &self.host_veths {
            let _ = run_command("ip", &["link", "del", veth]);
        }
        let _ = run_command("ip", &["link", "del", &self.bridge]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Moves the calling thread into the network namespace at `path` (`/var/run/netns/NAME`).
/// Sockets the thread creates afterwards live in that namespace for their whole life.
pub fn enter_namespace(path: &str) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_recognised_by_their_owner_pid() {
        assert_eq!(prefix_for(42, 0), "rk42a");
        assert_eq!(prefix_for(42, 27), "rk42b");
        assert_eq!(owner_of("rk42an1"), Some((42, "rk42a")));
        assert_eq!(owner_of("rk42bbr"), Some((42, "rk42b")));
        assert_eq!(owner_of("rk42cv3"), Some((42, "rk42c")));
        assert_eq!(owner_of("rk42x"), None);
        assert_eq!(owner_of("rk42"), None);
        assert_eq!(owner_of("rkabr"), None);
        assert_eq!(owner_of("eth0"), None);
    }

    #[test]
    fn commands_that_fail_report_their_stderr() {
        let e = run_command("sh", &["-c", "echo boom >&2; exit 3"]).unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
    }
}
