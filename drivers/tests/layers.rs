//! The crates' imports against the table in docs/architecture.md: each crate names in its
//! `[dependencies]` only the backstop crates its layer may import (those on lower floors).

use std::collections::BTreeSet;
use std::path::Path;

/// (folder, crate, the backstop crates it may import)
const LAYERS: &[(&str, &str, &[&str])] = &[
    // The one shape of a library error (its macro): the floor under every library.
    ("protocol/fault", "backstop-fault", &[]),
    ("protocol", "backstop-protocol", &["backstop-fault"]),
    ("datastore/storage", "backstop-storage", &["backstop-fault"]),
    ("datastore/image", "backstop-image", &["backstop-fault"]),
    // The real servers tests start; only tests and the benchmark import it.
    ("tests/kit", "backstop-testkit", &[]),
    (
        "datastore/repo",
        "backstop-repo",
        &["backstop-fault", "backstop-storage", "backstop-image"],
    ),
    (
        "datastore",
        "backstop-datastore",
        &[
            "backstop-fault",
            "backstop-protocol",
            "backstop-storage",
            "backstop-image",
            "backstop-repo",
        ],
    ),
    (
        "tm",
        "backstop-tm",
        &["backstop-fault", "backstop-protocol", "backstop-image"],
    ),
    (
        "backupjob",
        "backstop-backupjob",
        &[
            "backstop-protocol",
            "backstop-storage",
            "backstop-image",
            "backstop-datastore",
        ],
    ),
    ("web", "backstop-web", &["backstop-backupjob"]),
    (
        "bench",
        "backstop-bench",
        &[
            "backstop-protocol",
            "backstop-storage",
            "backstop-image",
            "backstop-datastore",
            "backstop-backupjob",
            "backstop-testkit",
        ],
    ),
];

/// The backstop crates named in a manifest's `[dependencies]` table.
fn imports(manifest: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_deps = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && line.starts_with("backstop-") {
            let name = line
                .split(|c: char| c == '.' || c == '=' || c.is_whitespace())
                .next()
                .unwrap_or_default();
            out.insert(name.to_string());
        }
    }
    out
}

#[test]
fn every_crate_imports_only_the_layers_below_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let workspace = std::fs::read_to_string(root.join("Cargo.toml")).expect("workspace manifest");
    let mut wrong = Vec::new();
    for (folder, name, allowed) in LAYERS {
        assert!(
            workspace.contains(&format!("\"{folder}\"")),
            "{folder} is not a workspace member"
        );
        let manifest = std::fs::read_to_string(root.join(folder).join("Cargo.toml"))
            .unwrap_or_else(|e| panic!("{folder}/Cargo.toml: {e}"));
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{folder} is not {name}"
        );
        let allowed: BTreeSet<String> = allowed.iter().map(|s| s.to_string()).collect();
        for import in imports(&manifest).difference(&allowed) {
            wrong.push(format!("{name} imports {import}, a crate not below it"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_reader_sees_a_forbidden_import() {
    let manifest = "[package]\nname = \"x\"\n[dependencies]\nbackstop-web.workspace = true\nserde = \"1\"\n[dev-dependencies]\nbackstop-tm.workspace = true\n";
    let seen = imports(manifest);
    assert_eq!(seen, BTreeSet::from(["backstop-web".to_string()]));
}

/// The runner is a library (issue 24): `backupjob/` holds no command line (no clap, no
/// `cli` module), and the web server calls its operations in process rather than executing
/// the binary.
#[test]
fn the_runner_has_no_command_line_and_the_web_server_runs_no_backstop() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = std::fs::read_to_string(root.join("backupjob/Cargo.toml")).expect("manifest");
    let deps: Vec<&str> = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap_or_default()
        .split("\n[")
        .next()
        .unwrap_or_default()
        .lines()
        .collect();
    assert!(
        !deps.iter().any(|l| l.trim_start().starts_with("clap")),
        "backupjob/ depends on clap"
    );
    assert!(
        !root.join("backupjob/src/cli").exists() && !root.join("backupjob/src/cli.rs").exists(),
        "backupjob/ has a cli module"
    );
    let mut spawns = Vec::new();
    for entry in std::fs::read_dir(root.join("web/src")).expect("web/src") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains("current_exe") || text.contains("process::Command") {
            spawns.push(path.display().to_string());
        }
    }
    assert!(
        spawns.is_empty(),
        "the web server runs a process: {spawns:?}"
    );
}
