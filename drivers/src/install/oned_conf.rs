//! What oned.conf needs for DS_MAD="backstop", worked out from the front-end's own oned.conf:
//! its DATASTORE_MAD block with backstop added to the `-d` list and nothing else changed, and
//! the DS_MAD_CONF, DATASTORE_ENCRYPTED_ATTR and VM_RESTRICTED_ATTR lines it lacks. Without an
//! oned.conf to read, OpenNebula 7.4's stock lists stand in (README, "Installing into OpenNebula").

/// OpenNebula 7.4's stock DATASTORE_MAD arguments (share/etc/oned.conf of release-7.4.0).
pub const STOCK_7_4_DATASTORE_ARGUMENTS: &str = "-t 15 -d dummy,fs,lvm,ceph,dev,iscsi_libvirt,restic,rsync,netapp,purefa,virtiofs,interactive -s dummy,lvm,shared,ssh,local,ceph,fs_lvm,fs_lvm_ssh,qcow2,netapp,purefa";

/// Datastore attributes backstop reads that hold secrets: oned keeps them encrypted.
const ENCRYPTED: [&str; 3] = [
    "RESTIC_PASSWORD",
    "RESTIC_S3_SECRET_ACCESS_KEY",
    "RESTIC_S3_MAINTENANCE_SECRET_ACCESS_KEY",
];

/// VM attributes a VM owner must not set: where a Ceph datastore leaves them out, a disk's
/// own would choose the Ceph user, key, configuration or pool its backups read.
const RESTRICTED: [&str; 4] = [
    "DISK/CEPH_USER",
    "DISK/CEPH_KEY",
    "DISK/CEPH_CONF",
    "DISK/POOL_NAME",
];

/// One attribute of oned.conf: `NAME = "value"` or `NAME = [ KEY = "value", ... ]`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Single(String),
    Vector(Vec<(String, String)>),
}

/// The attributes of an oned.conf, in order, comments left out. What cannot be read (a line
/// of another shape) is skipped: the advice names only what it found.
fn attributes(text: &str) -> Vec<(String, Value)> {
    let tokens = tokens(text);
    let mut out = Vec::new();
    let mut i = 0;
    while i + 2 < tokens.len() {
        let (Token::Word(name), Token::Eq) = (&tokens[i], &tokens[i + 1]) else {
            i += 1;
            continue;
        };
        match &tokens[i + 2] {
            Token::Open => {
                let mut pairs = Vec::new();
                let mut j = i + 3;
                while j < tokens.len() && tokens[j] != Token::Close {
                    if let (Some(Token::Word(k)), Some(Token::Eq), Some(v)) =
                        (tokens.get(j), tokens.get(j + 1), tokens.get(j + 2))
                        && let Some(v) = v.text()
                    {
                        pairs.push((k.to_ascii_uppercase(), v.to_string()));
                        j += 3;
                    } else {
                        j += 1;
                    }
                }
                out.push((name.to_ascii_uppercase(), Value::Vector(pairs)));
                i = j + 1;
            }
            v => {
                if let Some(v) = v.text() {
                    out.push((name.to_ascii_uppercase(), Value::Single(v.to_string())));
                }
                i += 3;
            }
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Eq,
    Open,
    Close,
    Comma,
}

impl Token {
    fn text(&self) -> Option<&str> {
        match self {
            Token::Word(w) | Token::Quoted(w) => Some(w),
            _ => None,
        }
    }
}

fn tokens(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' => {
                let mut s = String::new();
                for c in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                    s.push(c);
                }
                out.push(Token::Quoted(s));
            }
            '=' => out.push(Token::Eq),
            '[' => out.push(Token::Open),
            ']' => out.push(Token::Close),
            ',' => out.push(Token::Comma),
            c if c.is_whitespace() => {}
            c => {
                let mut s = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || "=[],\"#".contains(n) {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                out.push(Token::Word(s));
            }
        }
    }
    out
}

/// `arguments` with `backstop` added to its list of datastore drivers (`-d LIST`, `-dLIST`,
/// `--ds-types LIST` or `--ds-types=LIST`, as one_datastore reads them), at the end; unchanged
/// when it is there already or there is no list (oned then enables every driver).
fn with_backstop(arguments: &str) -> String {
    let add = |list: &str| {
        let mut drivers: Vec<&str> = list.split(',').filter(|d| !d.is_empty()).collect();
        if !drivers.contains(&"backstop") {
            drivers.push("backstop");
        }
        drivers.join(",")
    };
    let words: Vec<&str> = arguments.split_whitespace().collect();
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        if (w == "-d" || w == "--ds-types")
            && let Some(list) = words.get(i + 1)
        {
            out.push(w.to_string());
            out.push(add(list));
            i += 2;
            continue;
        }
        if let Some(list) = w.strip_prefix("--ds-types=") {
            out.push(format!("--ds-types={}", add(list)));
        } else if let Some(list) = w
            .strip_prefix("-d")
            .filter(|l| !l.is_empty() && !w.starts_with("--"))
        {
            out.push(format!("-d{}", add(list)));
        } else {
            out.push(w.to_string());
        }
        i += 1;
    }
    out.join(" ")
}

/// The lines to print: what to put in oned.conf, read from `conf` (the front-end's oned.conf)
/// or, with `None`, from OpenNebula 7.4's stock lists. `source` names where they came from.
pub fn advice(conf: Option<&str>, source: &str) -> String {
    let attrs = conf.map(attributes).unwrap_or_default();
    let singles = |name: &str| -> Vec<&str> {
        attrs
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, v)| match v {
                Value::Single(s) => Some(s.as_str()),
                Value::Vector(_) => None,
            })
            .collect()
    };
    let datastore_mad = attrs.iter().rev().find_map(|(n, v)| match v {
        Value::Vector(pairs) if n == "DATASTORE_MAD" => Some(pairs.clone()),
        _ => None,
    });
    let has_conf = attrs.iter().any(|(n, v)| {
        n == "DS_MAD_CONF"
            && matches!(v, Value::Vector(p) if p.iter().any(|(k, v)| k == "NAME" && v == "backstop"))
    });
    let mut s = format!(
        "\nTo let oned use DS_MAD=\"backstop\", oned.conf needs (worked out from {source}; then restart oned and run `onehost sync --force`):\n"
    );
    let mut step = 0;
    let mut next = |s: &mut String, what: &str| {
        step += 1;
        s.push_str(&format!("  {step}. {what}\n"));
    };
    match &datastore_mad {
        Some(pairs) => {
            let arguments = pairs
                .iter()
                .find(|(k, _)| k == "ARGUMENTS")
                .map(|(_, v)| v.as_str())
                .unwrap_or_default();
            let updated = with_backstop(arguments);
            if updated == arguments.split_whitespace().collect::<Vec<_>>().join(" ") {
                next(
                    &mut s,
                    "DATASTORE_MAD already enables backstop (or every driver): no change",
                );
            } else {
                next(
                    &mut s,
                    "backstop added to the -d list of DATASTORE_MAD (the rest as it is):",
                );
                s.push_str("     DATASTORE_MAD = [\n");
                let lines: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| {
                        let v = if k == "ARGUMENTS" { &updated } else { v };
                        format!("         {k} = \"{v}\"")
                    })
                    .collect();
                s.push_str(&lines.join(",\n"));
                s.push_str("\n     ]\n");
            }
        }
        None => {
            next(
                &mut s,
                "add backstop to the -d list of your DATASTORE_MAD, keeping every driver it has; on a stock OpenNebula 7.4 front-end that is:",
            );
            s.push_str(&format!(
                "     DATASTORE_MAD = [\n         EXECUTABLE = \"one_datastore\",\n         ARGUMENTS = \"{}\"\n     ]\n",
                with_backstop(STOCK_7_4_DATASTORE_ARGUMENTS)
            ));
        }
    }
    next(
        &mut s,
        "TM_MAD: no change (backstop's TM actions, with --with-tm, live inside the TM drivers already listed)",
    );
    if has_conf {
        next(&mut s, "DS_MAD_CONF for backstop: already there");
    } else {
        next(&mut s, "the driver's configuration:");
        s.push_str("     DS_MAD_CONF = [ NAME = \"backstop\", REQUIRED_ATTRS = \"RESTIC_PASSWORD\", PERSISTENT_ONLY = \"YES\" ]\n");
    }
    // The single-valued lines backstop needs: those oned.conf lacks, or that all are there.
    for (name, wanted, there, why) in [
        (
            "DATASTORE_ENCRYPTED_ATTR",
            &ENCRYPTED[..],
            "the repository password and S3 secret keys are encrypted at rest already",
            "the secrets encrypted at rest (the repository password, the S3 secret keys):",
        ),
        (
            "VM_RESTRICTED_ATTR",
            &RESTRICTED[..],
            "the Ceph attributes are restricted already",
            "so that a VM template cannot choose the Ceph options its backups use where a Ceph datastore does not set them:",
        ),
    ] {
        let present = singles(name);
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|a| !present.contains(a))
            .collect();
        if missing.is_empty() {
            next(&mut s, there);
        } else {
            next(&mut s, why);
            for a in missing {
                s.push_str(&format!("     {name} = \"{a}\"\n"));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The driver lists of OpenNebula 6.10's stock oned.conf.
    const CONF_6_10: &str = "# a comment = [ not = \"this\" ]\n\
        DATASTORE_MAD = [\n    EXECUTABLE = \"one_datastore\",\n    ARGUMENTS  = \"-t 15 -d dummy,fs,lvm,ceph,dev,iscsi_libvirt,vcenter,restic,rsync -s shared,ssh,ceph,fs_lvm,fs_lvm_ssh,qcow2,vcenter\"\n]\n\
        DATASTORE_ENCRYPTED_ATTR = \"RESTIC_PASSWORD\"\n\
        VM_RESTRICTED_ATTR = \"NIC/MAC\"\n\
        DS_MAD_CONF = [\n    NAME = \"restic\", REQUIRED_ATTRS = \"RESTIC_PASSWORD\", PERSISTENT_ONLY = \"YES\"\n]\n";

    fn drivers_of(advice: &str) -> Vec<String> {
        let line = advice
            .lines()
            .find(|l| l.trim_start().starts_with("ARGUMENTS"))
            .expect("an ARGUMENTS line");
        let args = line.split('"').nth(1).expect("quoted");
        let mut words = args.split_whitespace();
        while let Some(w) = words.next() {
            if w == "-d" {
                return words
                    .next()
                    .expect("list")
                    .split(',')
                    .map(str::to_string)
                    .collect();
            }
        }
        panic!("no -d in {args}");
    }

    #[test]
    fn the_front_ends_own_drivers_are_kept_and_backstop_added() {
        let a = advice(Some(CONF_6_10), "/etc/one/oned.conf");
        assert_eq!(
            drivers_of(&a),
            "dummy,fs,lvm,ceph,dev,iscsi_libvirt,vcenter,restic,rsync,backstop"
                .split(',')
                .collect::<Vec<_>>()
        );
        assert!(
            a.contains("-s shared,ssh,ceph,fs_lvm,fs_lvm_ssh,qcow2,vcenter\""),
            "{a}"
        );
        assert!(a.contains("EXECUTABLE = \"one_datastore\""), "{a}");
        assert!(a.contains("DATASTORE_ENCRYPTED_ATTR = \"RESTIC_S3_SECRET_ACCESS_KEY\""));
        assert!(
            !a.contains("DATASTORE_ENCRYPTED_ATTR = \"RESTIC_PASSWORD\""),
            "{a}"
        );
        for r in RESTRICTED {
            assert!(a.contains(&format!("VM_RESTRICTED_ATTR = \"{r}\"")), "{a}");
        }
        assert!(a.contains("DS_MAD_CONF = [ NAME = \"backstop\""), "{a}");
    }

    #[test]
    fn without_an_oned_conf_the_7_4_lists_are_used() {
        let a = advice(None, "OpenNebula 7.4's stock oned.conf");
        assert_eq!(
            drivers_of(&a),
            "dummy,fs,lvm,ceph,dev,iscsi_libvirt,restic,rsync,netapp,purefa,virtiofs,interactive,backstop"
                .split(',')
                .collect::<Vec<_>>()
        );
        assert!(a.contains(
            "-s dummy,lvm,shared,ssh,local,ceph,fs_lvm,fs_lvm_ssh,qcow2,netapp,purefa\""
        ));
        assert!(!a.contains("vcenter"), "{a}");
    }

    #[test]
    fn an_oned_conf_that_has_everything_needs_nothing() {
        let once = format!(
            "{}\nDS_MAD_CONF = [ NAME = \"backstop\", REQUIRED_ATTRS = \"RESTIC_PASSWORD\" ]\n\
             DATASTORE_ENCRYPTED_ATTR = \"RESTIC_S3_SECRET_ACCESS_KEY\"\n\
             DATASTORE_ENCRYPTED_ATTR = \"RESTIC_S3_MAINTENANCE_SECRET_ACCESS_KEY\"\n{}",
            CONF_6_10.replace("restic,rsync -s", "restic,rsync,backstop -s"),
            RESTRICTED
                .iter()
                .map(|r| format!("VM_RESTRICTED_ATTR = \"{r}\"\n"))
                .collect::<String>()
        );
        let a = advice(Some(&once), "x");
        assert!(a.contains("already enables backstop"), "{a}");
        assert!(a.contains("DS_MAD_CONF for backstop: already there"), "{a}");
        assert!(a.contains("encrypted at rest already"), "{a}");
        assert!(a.contains("restricted already"), "{a}");
        assert!(!a.contains(" = \""), "nothing to add:\n{a}");
    }

    #[test]
    fn hostile_or_odd_text_never_panics() {
        for text in [
            "",
            "=",
            "[",
            "A = [",
            "A = [ B =",
            "\"",
            "A = \"x",
            "# only",
            "]]]",
        ] {
            let _ = advice(Some(text), "x");
        }
        assert_eq!(with_backstop("-t 15"), "-t 15");
        assert_eq!(with_backstop("-d"), "-d");
        assert_eq!(with_backstop("-d fs,,backstop"), "-d fs,backstop");
        assert_eq!(
            with_backstop("-t 15 -dfs,ceph -s x"),
            "-t 15 -dfs,ceph,backstop -s x"
        );
        assert_eq!(
            with_backstop("--ds-types fs -s x"),
            "--ds-types fs,backstop -s x"
        );
        assert_eq!(
            with_backstop("--ds-types=fs,ceph"),
            "--ds-types=fs,ceph,backstop"
        );
        assert_eq!(with_backstop("--other -d fs"), "--other -d fs,backstop");
    }
}
