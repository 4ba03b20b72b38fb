//! `litecluster-e2e pod-exec`: inside the pod's mount namespace, mounts the program and the
//! volumes, applies the security context and execs.

use std::{
    fs::{self},
    os::unix::process::CommandExt,
    path::Path,
    process::Command,
};

use anyhow::{Context, Result, bail};

/// `litecluster-e2e pod-exec [--mount SRC:DST]... [--uid U] [--gid G] [--read-only-root]
/// -- PROGRAM ARGS...`: run by the kubelet under `ip netns exec` (which gives it a private
/// mount namespace); bind-mounts the program into a private tmpfs, then each volume at its
/// mount path, applies the security context, then execs the program (same pid, so signals
/// reach it directly). The program goes first: a volume over the directory the workspace lives
/// in (an emptyDir at `/tmp` with a checkout under `/tmp`) would otherwise hide it, and any user
/// can reach the tmpfs, whatever the permissions on the way to the workspace.
pub fn pod_exec(args: &[String]) -> Result<()> {
    let sep = args
        .iter()
        .position(|a| a == "--")
        .context("pod-exec: missing --")?;
    let (mut uid, mut gid, mut read_only_root) = (None::<u32>, None::<u32>, false);
    let mut mounts = Vec::new();
    let mut it = args[..sep].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--mount" => {
                let m = it.next().context("--mount needs SRC:DST")?;
                let (src, dst) = m.rsplit_once(':').context("--mount needs SRC:DST")?;
                mounts.push((src.to_string(), dst.to_string()));
            }
            "--uid" => uid = Some(it.next().context("--uid needs a value")?.parse()?),
            "--gid" => gid = Some(it.next().context("--gid needs a value")?.parse()?),
            "--read-only-root" => read_only_root = true,
            other => bail!("pod-exec: unexpected {other}"),
        }
    }
    let given = args.get(sep + 1).context("pod-exec: no program")?;
    let prog = {
        let dir = PROGRAMS_DIR;
        fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
        run("mount", &["-t", "tmpfs", "-o", "mode=0755", "tmpfs", dir])?;
        let name = Path::new(given)
            .file_name()
            .context("program without a file name")?;
        let dst = Path::new(dir).join(name);
        bind(Path::new(given), &dst.display().to_string())?;
        dst.display().to_string()
    };
    let mut volume_dsts = vec![PROGRAMS_DIR.to_string()];
    for (src, dst) in &mounts {
        if is_under(PROGRAMS_DIR, dst) {
            bail!("volume mount {dst} would hide the program: mount volumes elsewhere");
        }
        bind(Path::new(src), dst)?;
        volume_dsts.push(dst.clone());
    }
    if read_only_root {
        let keep: Vec<&str> = ["/proc", "/sys", "/dev", "/run/netns"]
            .into_iter()
            .chain(volume_dsts.iter().map(String::as_str))
            .collect();
        for mp in mount_points()? {
            if keep.iter().any(|k| is_under(&mp, k)) {
                continue;
            }
            let res = run("mount", &["-o", "remount,bind,ro", &mp]);
            match res {
                Err(e) if mp == "/" => return Err(e),
                // Odd host mounts (autofs, ...) may refuse; the root is what matters.
                Err(e) => eprintln!("pod-exec: leaving {mp} writable: {e:#}"),
                Ok(()) => {}
            }
        }
    }
    let mut cmd = Command::new(&prog);
    cmd.args(&args[sep + 2..]);
    if let Some(g) = gid {
        cmd.gid(g);
    }
    if let Some(u) = uid {
        // std drops supplementary groups when a root process switches user.
        cmd.uid(u);
    }
    let err = cmd.exec();
    bail!("exec {prog}: {err}")
}

/// Where pod-exec mounts the program, in the pod's private mount namespace.
pub(super) const PROGRAMS_DIR: &str = "/run/litecluster-e2e-programs";

pub(super) fn bind(src: &Path, dst: &str) -> Result<()> {
    mount_point(src, Path::new(dst))?;
    run("mount", &["--bind", &src.display().to_string(), dst])
}

/// Makes `dst` a mount point of the same kind as `src` (directory or file). A missing one is
/// created in the host's filesystem (this namespace shares it), so an earlier run, killed, may
/// have left one of the other kind behind: an empty leftover is replaced, anything else refused.
pub(super) fn mount_point(src: &Path, dst: &Path) -> Result<()> {
    let want_dir = src.is_dir();
    if let Ok(meta) = fs::symlink_metadata(dst) {
        if meta.is_dir() == want_dir {
            return Ok(());
        }
        let empty = if meta.is_dir() {
            fs::read_dir(dst)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false)
        } else {
            meta.is_file() && meta.len() == 0
        };
        if !empty {
            bail!(
                "mount point {} exists as a {} but the volume is a {}",
                dst.display(),
                if meta.is_dir() { "directory" } else { "file" },
                if want_dir { "directory" } else { "file" }
            );
        }
        if meta.is_dir() {
            fs::remove_dir(dst)
        } else {
            fs::remove_file(dst)
        }
        .with_context(|| format!("removing the leftover mount point {}", dst.display()))?;
    }
    if want_dir {
        fs::create_dir_all(dst)
    } else {
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(dst, b"")
    }
    .with_context(|| format!("creating mount point {}", dst.display()))
}

pub(super) fn run(prog: &str, args: &[&str]) -> Result<()> {
    let st = Command::new(prog)
        .args(args)
        .status()
        .with_context(|| format!("running {prog}"))?;
    if !st.success() {
        bail!("{prog} {} failed: {st}", args.join(" "));
    }
    Ok(())
}

pub(super) fn is_under(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    path == dir || path.starts_with(&format!("{dir}/"))
}

/// Mount points of this mount namespace, in mount order (octal escapes decoded).
pub(super) fn mount_points() -> Result<Vec<String>> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in info.lines() {
        if let Some(raw) = line.split(' ').nth(4) {
            let mp = unescape_mount(raw);
            if !out.contains(&mp) {
                out.push(mp);
            }
        }
    }
    Ok(out)
}

pub(super) fn unescape_mount(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&raw[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leftover_mount_point_of_the_other_kind_is_replaced_only_when_empty() {
        let t = std::env::temp_dir().join(format!("mount-point-{}", std::process::id()));
        let _ = fs::remove_dir_all(&t);
        let (dir_src, file_src) = (t.join("src-dir"), t.join("src-file"));
        fs::create_dir_all(&dir_src).unwrap();
        fs::write(&file_src, b"x").unwrap();
        // A killed run left an empty file where a directory volume goes, and the reverse.
        let dst = t.join("etc/litecluster/tls");
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::write(&dst, b"").unwrap();
        mount_point(&dir_src, &dst).unwrap();
        assert!(dst.is_dir());
        mount_point(&file_src, &dst).unwrap();
        assert!(dst.is_file());
        // Missing parents are created; something with content is never removed.
        let deep = t.join("a/b/c");
        mount_point(&dir_src, &deep).unwrap();
        assert!(deep.is_dir());
        fs::write(deep.join("data"), b"keep").unwrap();
        let err = mount_point(&file_src, &deep).unwrap_err().to_string();
        assert!(err.contains("exists as a directory"), "{err}");
        assert_eq!(fs::read(deep.join("data")).unwrap(), b"keep");
        fs::remove_dir_all(&t).unwrap();
    }

    #[test]
    fn mount_points_decode_octal_escapes() {
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }
}
