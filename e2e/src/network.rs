//! Pod networking for the process kubelet: one Linux bridge per control
//! plane (`lce<N>`, address `10.<200+N>.0.1/16`), one network namespace per
//! pod (`lce<N>-...`) with a veth pair to the bridge and an address from its
//! node's podCIDR. Every pod reaches every other pod and the host (the
//! apiserver listens on the bridge address) on the same L2 segment, so no
//! routes or NAT are needed.
//!
//! `ip netns exec` bind-mounts `/etc/netns/<name>/hosts` over `/etc/hosts`,
//! which is how pods resolve cluster DNS names (see [`crate::addons`]).
//!
//! Everything is recorded in `<run_dir>/network` so that [`cleanup`] (from
//! `down`, or a reaper in another process) can remove it.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// How many control planes may have a pod network at once.
const MAX_NETWORKS: u32 = 50;

#[derive(Debug, Clone)]
pub struct PodNetwork {
    pub index: u32,
    /// Bridge device, `lce<N>`.
    pub bridge: String,
    /// `10.<200+N>.0.0/16`: the cluster CIDR (nodes get /24s from it).
    pub cidr: String,
    /// `10.<200+N>.0.1`: the bridge's address; the apiserver is reached here.
    pub gateway: String,
    pub prefix_len: u8,
}

impl PodNetwork {
    fn for_index(index: u32) -> PodNetwork {
        PodNetwork {
            index,
            bridge: format!("lce{index}"),
            cidr: format!("10.{}.0.0/16", 200 + index),
            gateway: format!("10.{}.0.1", 200 + index),
            prefix_len: 16,
        }
    }

    /// Creates a bridge with the first free index and records it in
    /// `<run_dir>/network`.
    pub fn allocate(run_dir: &Path) -> Result<PodNetwork> {
        for index in 0..MAX_NETWORKS {
            let net = PodNetwork::for_index(index);
            // `ip link add` fails when the bridge exists: that is the lock.
            if ip_quiet(&["link", "add", &net.bridge, "type", "bridge"]).is_err() {
                continue;
            }
            fs::write(run_dir.join("network"), index.to_string())?;
            let setup = || -> Result<()> {
                ip(&[
                    "addr",
                    "add",
                    &format!("{}/{}", net.gateway, net.prefix_len),
                    "dev",
                    &net.bridge,
                ])?;
                ip(&["link", "set", &net.bridge, "up"])
            };
            if let Err(e) = setup() {
                cleanup(run_dir);
                return Err(e);
            }
            return Ok(net);
        }
        bail!("no free pod network (bridges lce0..lce{MAX_NETWORKS} all exist)")
    }

    /// Prefix of every pod network namespace of this network.
    pub fn netns_prefix(&self) -> String {
        netns_prefix(self.index)
    }
}

fn netns_prefix(index: u32) -> String {
    format!("lce{index}-")
}

/// Creates the namespace `netns` with `ip/prefix_len` on its `eth0`, a veth
/// (`host_if`) to `bridge`, loopback up, default route via `gateway`, and
/// `/etc/netns/<netns>/{hosts,resolv.conf}` (the resolver answers from the
/// hosts file only: `nameserver 127.0.0.1` fails at once in the namespace).
pub fn setup_pod(
    netns: &str,
    host_if: &str,
    bridge: &str,
    ip_addr: &str,
    prefix_len: u8,
    gateway: &str,
) -> Result<()> {
    let _ = teardown_pod(netns, host_if);
    ip(&["netns", "add", netns])?;
    ip(&[
        "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", netns,
    ])?;
    ip(&["link", "set", host_if, "master", bridge, "up"])?;
    ip(&[
        "-n",
        netns,
        "addr",
        "add",
        &format!("{ip_addr}/{prefix_len}"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", netns, "link", "set", "eth0", "up"])?;
    ip(&["-n", netns, "link", "set", "lo", "up"])?;
    ip(&["-n", netns, "route", "add", "default", "via", gateway])?;
    let etc = Path::new("/etc/netns").join(netns);
    fs::create_dir_all(&etc)?;
    fs::write(
        etc.join("hosts"),
        format!("127.0.0.1 localhost\n{ip_addr} {netns}\n"),
    )?;
    fs::write(
        etc.join("resolv.conf"),
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )?;
    Ok(())
}

/// Kills whatever still runs in `netns`, deletes it, its veth and its /etc/netns files.
pub fn teardown_pod(netns: &str, host_if: &str) -> Result<()> {
    kill_netns_pids(netns);
    let _ = ip_quiet(&["link", "del", host_if]);
    let _ = ip_quiet(&["netns", "del", netns]);
    let _ = fs::remove_dir_all(Path::new("/etc/netns").join(netns));
    Ok(())
}

fn kill_netns_pids(netns: &str) {
    if let Ok(out) = Command::new("ip")
        .args(["netns", "pids", netns])
        .stderr(Stdio::null())
        .output()
    {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Removes every pod namespace, veth and the bridge recorded in
/// `<run_dir>/network`, killing processes left in the namespaces. Idempotent.
pub fn cleanup(run_dir: &Path) {
    let Ok(text) = fs::read_to_string(run_dir.join("network")) else {
        return;
    };
    let Ok(index) = text.trim().parse::<u32>() else {
        return;
    };
    let prefix = netns_prefix(index);
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                kill_netns_pids(&name);
                let _ = ip_quiet(&["netns", "del", &name]);
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/etc/netns") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    // Deleting the bridge also drops veths still attached to it; host-side
    // veths of deleted namespaces vanish with their peer.
    let _ = ip_quiet(&["link", "del", &format!("lce{index}")]);
    let _ = fs::remove_file(run_dir.join("network"));
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip_quiet(args: &[&str]) -> Result<()> {
    ip(args)
}
