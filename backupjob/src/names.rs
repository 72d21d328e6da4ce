//! Attribute names checked when a template is stored, not when it is used at 3 a.m.: a name
//! close to a known one (`RESTIC_PASWORD`, `KEEP_MONTLY`) is refused naming the one it was
//! surely meant to be, and an unknown name in backstop's own namespaces (`RESTIC_`,
//! `BACKSTOP_`) is refused; any other name is the operator's own and is kept.

use crate::error::TemplateError;
use backstop_protocol::template::Template;

/// What a backup job's template may hold.
pub const BACKUP_JOB: &[&str] = &[
    "NAME",
    "PRIORITY",
    "EXECUTION",
    "BACKUP_VMS",
    "LABELS",
    "DATASTORE_ID",
    "MODE",
    "INCREMENT_MODE",
    "KEEP_LAST",
    "KEEP_HOURLY",
    "KEEP_DAILY",
    "KEEP_WEEKLY",
    "KEEP_MONTHLY",
    "KEEP_YEARLY",
    "FS_FREEZE",
    "BACKUP_VOLATILE",
    "DISK_IDS",
    "RESET",
    "MAX_INCREMENTS",
    "CHAIN_MAX_DAYS",
    "SCHED_ACTION",
    "NOTIFY",
    "NOTIFY_EMAIL",
    "NOTIFY_WEBHOOK",
    "DESCRIPTION",
];

/// The namespaces no operator attribute lives in.
const OURS: &[&str] = &["RESTIC_", "BACKSTOP_"];

/// Edits between two names: insertions, deletions, substitutions and swaps of two
/// neighbours (`MDOE` is one edit from `MODE`).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The known name `name` is most likely a typo of: within two edits (one for short names),
/// the nearest, the first listed on a tie.
pub fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let name = name.to_ascii_uppercase();
    let most = if name.len() <= 5 { 1 } else { 2 };
    known
        .iter()
        .map(|k| (distance(&name, k), *k))
        .filter(|(d, _)| *d <= most)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The first attribute of `t` that is refused (see the module's rules), as
/// `NAME is not an attribute of a <what>; did you mean KNOWN?`.
pub fn check(t: &Template, known: &[&str], what: &str) -> Result<(), TemplateError> {
    for a in &t.attributes {
        let upper = a.name.to_ascii_uppercase();
        if known.contains(&upper.as_str()) {
            continue;
        }
        if let Some(k) = closest(&upper, known) {
            return Err(TemplateError(format!(
                "{} is not an attribute of a {what}; did you mean {k}?",
                a.name
            )));
        }
        if OURS.iter().any(|p| upper.starts_with(p)) {
            return Err(TemplateError(format!(
                "{} is not an attribute of a {what} that backstop knows",
                a.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> Template {
        Template::parse(text).expect("template")
    }

    #[test]
    fn typos_name_the_attribute_they_were_meant_to_be() {
        let ds = backstop_datastore::settings::ATTRIBUTES;
        for (text, says) in [
            (
                "RESTIC_PASWORD=x",
                "RESTIC_PASWORD is not an attribute of a datastore; did you mean RESTIC_PASSWORD?",
            ),
            (
                "restic_conections=4",
                "RESTIC_CONECTIONS is not an attribute of a datastore; did you mean RESTIC_CONNECTIONS?",
            ),
            (
                "RESTIC_TURBO=yes",
                "RESTIC_TURBO is not an attribute of a datastore that backstop knows",
            ),
            ("BACKSTOP_LOCKWAIT=5", "did you mean BACKSTOP_LOCK_WAIT?"),
        ] {
            let e = check(&t(text), ds, "datastore").expect_err(text);
            assert!(e.0.contains(says), "{text}: {e}");
        }
        // Known names in any case, and the operator's own, pass.
        check(
            &t("NAME=a\nrestic_password=x\nOWNER_TEAM=ops\nRSYNC_HOST=h"),
            ds,
            "datastore",
        )
        .expect("fine");
        let e = check(&t("NAME=a\nKEEP_MONTLY=3"), BACKUP_JOB, "backup job").expect_err("typo");
        assert!(e.0.contains("did you mean KEEP_MONTHLY?"), "{e}");
        let e = check(&t("NAME=a\nMDOE=FULL"), BACKUP_JOB, "backup job").expect_err("typo");
        assert!(e.0.contains("did you mean MODE?"), "{e}");
        check(&t("NAME=a\nCOST_CENTER=7"), BACKUP_JOB, "backup job").expect("own attribute");
    }

    #[test]
    fn distances() {
        assert_eq!(distance("KEEP_LAST", "KEEP_LAST"), 0);
        assert_eq!(distance("KEEP_LSAT", "KEEP_LAST"), 1);
        assert_eq!(distance("MODE", "NODE"), 1);
        assert_eq!(closest("XYZ", BACKUP_JOB), None);
    }
}
