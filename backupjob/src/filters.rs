//! Which repositories and snapshots a sync or verify job takes (docs/sync.md).
//!
//! `VMS` and `BACKUP_JOBS` name repositories (`<vm_id>`, `job_<bj>`); when neither names one,
//! the job takes every repository of the datastore. `TAGS` are patterns (`*`, `?`) on the
//! snapshots' tags. Every item may be written `exclude:<item>`: an excluded VM's repository
//! is left out, and so are its snapshots in a backup job's repository (their `one-<vm>` tag);
//! an excluded job's repository is left out; a snapshot with a tag an exclude pattern matches
//! is left out, and when include patterns are given a snapshot is taken only when one of its
//! tags matches one of them.

use crate::Error;
use crate::error::TemplateError;
use backstop_protocol::template::Template;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub vms: Vec<u64>,
    pub not_vms: Vec<u64>,
    pub jobs: Vec<u64>,
    pub not_jobs: Vec<u64>,
    pub tags: Vec<String>,
    pub not_tags: Vec<String>,
}

/// A comma-separated list split into what it takes and what it excludes.
fn split(text: Option<&str>) -> (Vec<&str>, Vec<&str>) {
    let (mut take, mut leave) = (Vec::new(), Vec::new());
    for item in text.unwrap_or_default().split(',').map(str::trim) {
        match item.strip_prefix("exclude:").map(str::trim) {
            Some(x) if !x.is_empty() => leave.push(x),
            Some(_) => {}
            None if !item.is_empty() => take.push(item),
            None => {}
        }
    }
    (take, leave)
}

fn numbers(items: &[&str], what: &str) -> Result<Vec<u64>, TemplateError> {
    items
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|_| TemplateError(format!("{what} {s:?} is not an id (or exclude:<id>)")))
        })
        .collect()
}

impl Selection {
    pub fn parse(t: &Template) -> Result<Selection, TemplateError> {
        let (vms, not_vms) = split(t.get("VMS"));
        let (jobs, not_jobs) = split(t.get("BACKUP_JOBS"));
        let (tags, not_tags) = split(t.get("TAGS"));
        let pattern = |p: &&str| {
            if p.chars().any(|c| c.is_control()) {
                Err(TemplateError(format!(
                    "TAGS {p:?} holds a control character"
                )))
            } else {
                Ok(p.to_string())
            }
        };
        Ok(Selection {
            vms: numbers(&vms, "VMS")?,
            not_vms: numbers(&not_vms, "VMS")?,
            jobs: numbers(&jobs, "BACKUP_JOBS")?,
            not_jobs: numbers(&not_jobs, "BACKUP_JOBS")?,
            tags: tags.iter().map(pattern).collect::<Result<_, _>>()?,
            not_tags: not_tags.iter().map(pattern).collect::<Result<_, _>>()?,
        })
    }

    /// Whether the job names its repositories (else it takes every one of the datastore).
    pub fn names_repositories(&self) -> bool {
        !self.vms.is_empty() || !self.jobs.is_empty()
    }

    /// The repositories the job names, in the order named.
    pub fn named(&self) -> Vec<String> {
        self.vms
            .iter()
            .map(u64::to_string)
            .chain(self.jobs.iter().map(|j| format!("job_{j}")))
            .collect()
    }

    /// The repositories to take: those named, else those `listed`; the excluded left out.
    pub fn repositories(
        &self,
        listed: impl FnOnce() -> Result<Vec<String>, Error>,
    ) -> Result<Vec<String>, Error> {
        let all = if self.names_repositories() {
            self.named()
        } else {
            listed()?
        };
        let out: Vec<String> = self
            .not_vms
            .iter()
            .map(u64::to_string)
            .chain(self.not_jobs.iter().map(|j| format!("job_{j}")))
            .collect();
        Ok(all.into_iter().filter(|r| !out.contains(r)).collect())
    }

    /// Whether a snapshot with these tags is taken.
    pub fn takes(&self, tags: &[String]) -> bool {
        let excluded_vm = tags.iter().any(|t| {
            t.strip_prefix("one-")
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|v| self.not_vms.contains(&v))
        });
        let excluded_tag = tags
            .iter()
            .any(|t| self.not_tags.iter().any(|p| glob(p, t)));
        let included =
            self.tags.is_empty() || tags.iter().any(|t| self.tags.iter().any(|p| glob(p, t)));
        included && !excluded_vm && !excluded_tag
    }
}

/// `*` (any run of characters) and `?` (one character); anything else stands for itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut i, mut j) = (0, 0);
    // Where the last `*` was and how far the text had got then.
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < p.len() && (p[i] == '?' || p[i] == t[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(text: &str) -> Selection {
        Selection::parse(&Template::parse(text).expect("template")).expect("selection")
    }

    #[test]
    fn patterns_from_a_table() {
        for (p, t, is) in [
            ("one-*", "one-22", true),
            ("one-*", "one", false),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
            ("one-2?", "one-22", true),
            ("one-2?", "one-222", false),
            ("*-22", "one-22", true),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b", "xxaxxbxx", false),
            ("a**b", "ab", true),
            ("prod", "production", false),
        ] {
            assert_eq!(glob(p, t), is, "{p} on {t}");
        }
    }

    #[test]
    fn selections_from_a_table() {
        let listed = || {
            Ok(vec![
                "22".into(),
                "23".into(),
                "job_4".into(),
                "job_5".into(),
            ])
        };
        let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let all = sel("");
        assert_eq!(
            all.repositories(listed).expect("all"),
            ["22", "23", "job_4", "job_5"]
        );
        assert!(all.takes(&tags(&["one-23"])));
        let some = sel("VMS=\"exclude:23\"\nBACKUP_JOBS=\"exclude: 5\"\n");
        assert!(!some.names_repositories());
        assert_eq!(some.repositories(listed).expect("some"), ["22", "job_4"]);
        assert!(!some.takes(&tags(&["one-23"])), "VM 23's snapshot in a job");
        assert!(some.takes(&tags(&["one-22"])));
        let named = sel("VMS=\"23,22\"\nBACKUP_JOBS=\"4,exclude:5\"\n");
        assert_eq!(
            named
                .repositories(|| panic!("named repositories are not listed"))
                .expect("named"),
            ["23", "22", "job_4"]
        );
        let tagged = sel("TAGS=\"one-2*, exclude:one-23\"\n");
        assert!(tagged.takes(&tags(&["one-22"])));
        assert!(!tagged.takes(&tags(&["one-23"])));
        assert!(!tagged.takes(&tags(&["one-31"])));
        assert!(!tagged.takes(&[]));
        let excluded_only = sel("TAGS=\"exclude:test*\"\n");
        assert!(excluded_only.takes(&[]));
        assert!(!excluded_only.takes(&tags(&["one-1", "test-a"])));
        for (bad, says) in [
            ("VMS=\"a\"\n", "VMS \"a\""),
            ("VMS=\"exclude:x\"\n", "VMS \"x\""),
            ("BACKUP_JOBS=\"1.5\"\n", "BACKUP_JOBS"),
        ] {
            let e = Selection::parse(&Template::parse(bad).expect("template")).expect_err(bad);
            assert!(e.0.contains(says), "{bad}: {e}");
        }
    }
}
