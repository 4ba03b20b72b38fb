//! Images to programs, and `$(VAR)` expansion as Kubernetes does it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The default image map plus `REPO=PATH` overrides (later entries win).
pub fn image_map(bin_dir: &Path, overrides: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let mut map = Vec::new();
    for o in overrides.iter().rev() {
        let (k, v) = o
            .split_once('=')
            .with_context(|| format!("--image {o}: expected REPO=PATH"))?;
        map.push((k.to_string(), PathBuf::from(v)));
    }
    for bin in ["litecluster-node", "litecluster-operator"] {
        map.push((bin.to_string(), bin_dir.join(bin)));
    }
    Ok(map)
}

pub(super) fn resolve_image(map: &[(String, PathBuf)], image: &str) -> Option<PathBuf> {
    // Strip a digest or tag (a ':' after the last '/').
    let repo = image.split('@').next().unwrap_or(image);
    let repo = match repo.rfind(':') {
        Some(i) if i > repo.rfind('/').unwrap_or(0) => &repo[..i],
        _ => repo,
    };
    let last = repo.rsplit('/').next().unwrap_or(repo);
    map.iter()
        .find(|(k, _)| k == repo || k == image)
        .or_else(|| map.iter().find(|(k, _)| k == last))
        .map(|(_, p)| p.clone())
}

/// Expands `$(VAR)` from `env` (`$$` escapes; unknown references stay as written).
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                if let Some((_, v)) = env.iter().rev().find(|(k, _)| k == name) {
                    out.push_str(v);
                } else {
                    out.push_str(&s[i..i + 3 + end]);
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = s[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_like_kubernetes() {
        let env = vec![("POD_NAME".to_string(), "db-0".to_string())];
        assert_eq!(expand("$(POD_NAME).h:1", &env), "db-0.h:1");
        assert_eq!(expand("$$(POD_NAME)", &env), "$(POD_NAME)");
        assert_eq!(expand("$(NOPE)x", &env), "$(NOPE)x");
        assert_eq!(expand("a$", &env), "a$");
    }

    #[test]
    fn images_map_by_repository() {
        let m = image_map(Path::new("/b"), &["quay.io/x/y=/opt/y".into()]).unwrap();
        assert_eq!(
            resolve_image(&m, "ghcr.io/litecluster/litecluster-node:0.1.0"),
            Some(PathBuf::from("/b/litecluster-node"))
        );
        assert_eq!(
            resolve_image(&m, "quay.io/x/y:1"),
            Some(PathBuf::from("/opt/y"))
        );
        assert_eq!(
            resolve_image(&m, "localhost:5000/litecluster-operator"),
            Some(PathBuf::from("/b/litecluster-operator"))
        );
        assert_eq!(resolve_image(&m, "busybox"), None);
    }
}
