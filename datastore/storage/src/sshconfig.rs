//! The parts of OpenSSH's client configuration (`~/.ssh/config`) an SFTP repository needs:
//! `HostName`, `Port`, `User`, `IdentityFile` and `UserKnownHostsFile`, looked up the way
//! `ssh` does: every `Host` block whose patterns match contributes, and the first value found
//! for a keyword wins. Patterns support `*`, `?` and `!negation`. `Match` blocks and `Include`
//! are not understood; their lines are skipped, so a setting made only there is not applied.

use std::path::{Path, PathBuf};

/// What the configuration says about one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub identity_files: Vec<PathBuf>,
    pub known_hosts_files: Vec<PathBuf>,
}

fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative wildcard match with backtracking on the last '*'.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi].eq_ignore_ascii_case(&t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn host_matches(patterns: &[String], host: &str) -> bool {
    let mut matched = false;
    for p in patterns {
        if let Some(negated) = p.strip_prefix('!') {
            if glob(negated, host) {
                return false;
            }
        } else if glob(p, host) {
            matched = true;
        }
    }
    matched
}

fn expand(path: &str, home: &Path) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => home.join(rest),
        None => PathBuf::from(path),
    }
}

/// Looks `host` up in the configuration text.
pub fn lookup(text: &str, host: &str, home: &Path) -> HostConfig {
    let mut cfg = HostConfig::default();
    let mut active = true; // lines before the first Host apply to every host
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once(|c: char| c.is_whitespace() || c == '=') {
            Some((k, v)) => (
                k.to_ascii_lowercase(),
                v.trim_start_matches(|c: char| c.is_whitespace() || c == '=')
                    .trim(),
            ),
            None => continue,
        };
        let value = value.trim_matches('"');
        match key.as_str() {
            "host" => {
                let patterns: Vec<String> = value.split_whitespace().map(str::to_string).collect();
                active = host_matches(&patterns, host);
            }
            "match" => active = false,
            _ if !active => {}
            "hostname" if cfg.hostname.is_none() => cfg.hostname = Some(value.to_string()),
            "port" if cfg.port.is_none() => cfg.port = value.parse().ok(),
            "user" if cfg.user.is_none() => cfg.user = Some(value.to_string()),
            "identityfile" => cfg.identity_files.push(expand(value, home)),
            "userknownhostsfile" if cfg.known_hosts_files.is_empty() => {
                cfg.known_hosts_files = value.split_whitespace().map(|p| expand(p, home)).collect();
            }
            _ => {}
        }
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_like_ssh() {
        let text = "\
# test config
Host backup1 backup-*
  HostName 127.0.0.2
  Port 2222
  IdentityFile ~/.ssh/backup_ed25519
Host backup-old
  HostName 10.9.9.9
Host * !backup1
  User oneadmin
Host *
  User root
  UserKnownHostsFile /tmp/kh1 ~/kh2
  Port 22
Match host x
  User nobody
";
        let home = Path::new("/home/me");
        let b1 = lookup(text, "backup1", home);
        assert_eq!(b1.hostname.as_deref(), Some("127.0.0.2"));
        assert_eq!(b1.port, Some(2222));
        assert_eq!(
            b1.user.as_deref(),
            Some("root"),
            "backup1 is excluded from the oneadmin block"
        );
        assert_eq!(
            b1.identity_files,
            vec![PathBuf::from("/home/me/.ssh/backup_ed25519")]
        );
        assert_eq!(
            b1.known_hosts_files,
            vec![PathBuf::from("/tmp/kh1"), PathBuf::from("/home/me/kh2")]
        );
        let old = lookup(text, "backup-old", home);
        assert_eq!(
            old.hostname.as_deref(),
            Some("127.0.0.2"),
            "the first matching value wins"
        );
        assert_eq!(old.user.as_deref(), Some("oneadmin"));
        let other = lookup(text, "elsewhere", home);
        assert_eq!((other.hostname, other.port), (None, Some(22)));
        assert!(glob("back*p?", "backup1") && !glob("back*p?", "backup12") && glob("*", ""));
    }
}
