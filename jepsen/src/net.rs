//! The test network: one network namespace per node and one for the S3 server, each
//! joined to a bridge in the harness's namespace by a veth pair, so nodes talk over real
//! (virtual) links and a partition is a real packet drop. Separate namespaces also keep
//! concurrent runs from competing for ports. A partition between two nodes is a pair of blackhole
//! routes (each node silently drops what it sends to the other), which needs nothing but
//! iproute2; the harness's own clients and the S3 server on the bridge stay reachable.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, bail};

/// Runs a command, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program} (is iproute2 installed?)"))?;
    if !output.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The bridge, the namespaces and the partitions of one run.
#[derive(Debug)]
pub struct Network {
    /// Name of the bridge in the harness's namespace.
    bridge: String,
    /// `10.231.X`: the /24 the run uses.
    prefix: [u8; 3],
    /// One namespace name per node (index 0 is node 1), then the S3 server's.
    namespaces: Vec<String>,
    /// Number of nodes.
    nodes: usize,
    /// Node pairs (1-based, smaller first) that cannot reach each other now.
    cut: BTreeSet<(usize, usize)>,
}

/// Namespace names start with this, then the harness's pid.
const NAMESPACE_PREFIX: &str = "wmail-jepsen-";

impl Network {
    /// Creates the bridge and `nodes` namespaces. Needs root (CAP_NET_ADMIN). Leftovers of
    /// runs whose harness died are removed first.
    pub fn create(nodes: usize) -> anyhow::Result<Self> {
        if !std::path::Path::new("/proc/self/ns/net").exists() {
            bail!("network namespaces are not available on this machine");
        }
        remove_leftovers();
        let pid = std::process::id();
        // A /24 of 10.231.0.0/16 that no route uses yet (another run's, say).
        let third = (0..250)
            .map(|offset| ((pid + offset) % 250 + 1) as u8)
            .find(|third| {
                run("ip", &["route", "show", &format!("10.231.{third}.0/24")]).is_ok_and(|r| r.trim().is_empty())
            })
            .context("no free /24 in 10.231.0.0/16 for the test network")?;
        let prefix = [10, 231, third];
        let mut network =
            Self { bridge: format!("wjb{pid}"), prefix, namespaces: Vec::new(), nodes, cut: BTreeSet::new() };
        run("ip", &["link", "add", &network.bridge, "type", "bridge"])
            .context("creating the test bridge needs root (CAP_NET_ADMIN): run the harness as root, as CI does")?;
        let host = format!("{}/24", network.host_ip());
        run("ip", &["addr", "add", &host, "dev", &network.bridge])?;
        run("ip", &["link", "set", &network.bridge, "up"])?;
        // Node namespaces are n1..nN; the S3 server's is "s3" at host number 2.
        for (name, host) in (1..=nodes).map(|node| (format!("n{node}"), 10 + node as u8)).chain([("s3".into(), 2)]) {
            let namespace = format!("{NAMESPACE_PREFIX}{pid}-{name}");
            run("ip", &["netns", "add", &namespace])?;
            network.namespaces.push(namespace.clone());
            let outside = format!("wjv{pid}{name}");
            run("ip", &["link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &namespace])?;
            run("ip", &["link", "set", &outside, "master", &network.bridge])?;
            run("ip", &["link", "set", &outside, "up"])?;
            let address = format!("{}/24", Ipv4Addr::new(prefix[0], prefix[1], prefix[2], host));
            run("ip", &["-n", &namespace, "addr", "add", &address, "dev", "eth0"])?;
            run("ip", &["-n", &namespace, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &namespace, "link", "set", "lo", "up"])?;
        }
        Ok(network)
    }

    /// The harness's address on the bridge.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], 1)
    }

    /// The S3 server's address.
    pub fn s3_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], 2)
    }

    /// The S3 server's namespace name.
    pub fn s3_namespace(&self) -> &str {
        &self.namespaces[self.nodes]
    }

    /// Node `node`'s address (1-based).
    pub fn node_ip(&self, node: usize) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], 10 + node as u8)
    }

    /// Node `node`'s namespace name.
    pub fn namespace(&self, node: usize) -> &str {
        &self.namespaces[node - 1]
    }

    /// Cuts every link between a node of one group and a node of another (a node in no
    /// group keeps all its links). Replaces any earlier partition.
    pub fn partition(&mut self, groups: &[Vec<usize>]) -> anyhow::Result<()> {
        self.heal()?;
        for (index, group) in groups.iter().enumerate() {
            for other in &groups[index + 1..] {
                for &a in group {
                    for &b in other {
                        self.cut_link(a, b)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Cuts the links between the given pairs of nodes (each pair both ways).
    pub fn cut_links(&mut self, pairs: &[(usize, usize)]) -> anyhow::Result<()> {
        for &(a, b) in pairs {
            self.cut_link(a, b)?;
        }
        Ok(())
    }

    fn cut_link(&mut self, a: usize, b: usize) -> anyhow::Result<()> {
        let pair = (a.min(b), a.max(b));
        if a == b || !self.cut.insert(pair) {
            return Ok(());
        }
        for (from, to) in [(a, b), (b, a)] {
            let target = format!("{}/32", self.node_ip(to));
            run("ip", &["-n", self.namespace(from), "route", "add", "blackhole", &target])?;
        }
        Ok(())
    }

    /// Restores every cut link.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        let cut = std::mem::take(&mut self.cut);
        for (a, b) in cut {
            for (from, to) in [(a, b), (b, a)] {
                let target = format!("{}/32", self.node_ip(to));
                run("ip", &["-n", self.namespace(from), "route", "del", "blackhole", &target])?;
            }
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for namespace in &self.namespaces {
            // Deleting a namespace deletes its veth end, and with it the end on the bridge.
            let _ = run("ip", &["netns", "del", namespace]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

/// The source name of the data disks (tmpfs) a harness mounts.
pub fn disk_source() -> String {
    format!("{NAMESPACE_PREFIX}{}", std::process::id())
}

/// Removes what harness processes that no longer exist left behind (killed with SIGKILL,
/// say): the processes in their namespaces, the namespaces, bridges and data disks.
fn remove_leftovers() {
    let alive = |pid: &str| std::path::Path::new("/proc").join(pid).exists();
    if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix(NAMESPACE_PREFIX).and_then(|rest| rest.split('-').next())
                && !alive(pid)
            {
                for process in run("ip", &["netns", "pids", &name]).unwrap_or_default().split_whitespace() {
                    let _ = run("kill", &["-KILL", process]);
                }
                let _ = run("ip", &["netns", "del", &name]);
            }
        }
    }
    for line in std::fs::read_to_string("/proc/mounts").unwrap_or_default().lines() {
        let mut fields = line.split(' ');
        if let (Some(source), Some(target)) = (fields.next(), fields.next())
            && let Some(pid) = source.strip_prefix(NAMESPACE_PREFIX)
            && !alive(pid)
        {
            let _ = run("umount", &[target]);
        }
    }
    if let Ok(links) = run("ip", &["-o", "link", "show", "type", "bridge"]) {
        for line in links.lines() {
            let Some(name) = line.split(": ").nth(1).map(|name| name.split('@').next().unwrap_or(name)) else {
                continue;
            };
            if let Some(pid) = name.strip_prefix("wjb")
                && pid.chars().all(|c| c.is_ascii_digit())
                && !alive(pid)
            {
                let _ = run("ip", &["link", "del", name]);
            }
        }
    }
}
