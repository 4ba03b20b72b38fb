//! Background processes: each in its own process group, output to a log
//! file, pid recorded in `<run_dir>/pids/<name>.pid` so that a later `down`
//! (from another process) can stop it.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use nix::{
    errno::Errno,
    sys::signal::{Signal, killpg},
    unistd::Pid,
};

pub(crate) struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(run_dir: &Path, name: &str, program: &Path, args: &[String]) -> Result<Proc> {
        let log = run_dir.join("logs").join(format!("{name}.log"));
        fs::create_dir_all(log.parent().unwrap())?;
        let out = OpenOptions::new().create(true).append(true).open(&log)?;
        let err = out.try_clone()?;
        fs::write(
            &log,
            format!("# {} {}\n", program.display(), args.join(" ")),
        )?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let pids = run_dir.join("pids");
        fs::create_dir_all(&pids)?;
        fs::write(pids.join(format!("{name}.pid")), child.id().to_string())?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// `Err` with the log tail if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "{} exited with {status}; last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 40)
            );
        }
        Ok(())
    }

    /// SIGTERM to the process group, SIGKILL after `grace`; reaps the child.
    pub fn stop(&mut self, grace: Duration) {
        let pgid = Pid::from_raw(self.child.id() as i32);
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = killpg(pgid, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        // Whatever is left in the group (the leader, or anything it forked).
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Order in which recorded components are stopped: anything unknown (pods,
/// kubelets started later) first, then the control plane from the top down.
const STOP_ORDER: &[&str] = &[
    "kube-scheduler",
    "kube-controller-manager",
    "kube-apiserver",
    "etcd",
];

/// Stops the process groups recorded under `<run_dir>/pids` by a process that
/// may no longer exist (the CLI's `down`), one after another (SIGTERM, SIGKILL
/// after `grace`). Returns the names it signalled.
pub(crate) fn stop_recorded(run_dir: &Path, grace: Duration) -> Vec<String> {
    let Ok(entries) = fs::read_dir(run_dir.join("pids")) else {
        return Vec::new();
    };
    let mut groups: Vec<(i32, String)> = Vec::new();
    for e in entries.flatten() {
        let Ok(text) = fs::read_to_string(e.path()) else {
            continue;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            continue;
        };
        if pid <= 1 {
            continue;
        }
        let name = e
            .file_name()
            .to_string_lossy()
            .trim_end_matches(".pid")
            .to_string();
        // Only groups that still exist and whose leader is still the program we started.
        if killpg(Pid::from_raw(pid), None).is_ok() && leader_matches(pid, &name) {
            groups.push((pid, name));
        }
    }
    let rank = |name: &str| {
        STOP_ORDER
            .iter()
            .position(|n| *n == name)
            .map_or(0, |i| i + 1)
    };
    groups.sort_by_key(|(_, name)| rank(name));
    let mut stopped = Vec::new();
    for (pid, name) in groups {
        let pgid = Pid::from_raw(pid);
        let started = Instant::now();
        let _ = killpg(pgid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && group_running(pid) {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        stopped.push(format!("{name} ({:.1}s)", started.elapsed().as_secs_f64()));
    }
    stopped
}

/// The group exists and its leader has not exited. (An exited leader that is
/// not our child stays a zombie until init reaps it, which can take seconds;
/// stragglers in its group get the SIGKILL that follows.)
fn group_running(pgid: i32) -> bool {
    if killpg(Pid::from_raw(pgid), None) == Err(Errno::ESRCH) {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pgid}/stat")) {
        // Format: "pid (comm) STATE ..."; comm may contain spaces or parens.
        Ok(stat) => !matches!(
            stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next()),
            Some('Z' | 'X')
        ),
        Err(_) => false,
    }
}

/// The group leader's command line mentions the component name, which is
/// also its program's name (guards against a recycled pid).
fn leader_matches(pid: i32, name: &str) -> bool {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmd) => String::from_utf8_lossy(&cmd).contains(name),
        // Leader gone but group alive: still ours to clean.
        Err(_) => true,
    }
}

/// The last `lines` lines of a file (reads at most the final 64 KiB).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
