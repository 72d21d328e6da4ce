//! Shared helpers: running commands with stdin, a stand-in OpenNebula remotes tree.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const BACKSTOP: &str = env!("CARGO_BIN_EXE_backstop");

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// What a command did.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Outcome {
    fn from(out: std::process::Output) -> Outcome {
        Outcome {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

pub fn run(program: impl AsRef<Path>, args: &[&str], stdin: &[u8]) -> Outcome {
    run_env(program, args, stdin, &[])
}

/// [`run`] with more environment variables.
pub fn run_env(
    program: impl AsRef<Path>,
    args: &[&str],
    stdin: &[u8],
    env: &[(&str, &str)],
) -> Outcome {
    let mut child = Command::new(program.as_ref())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.as_ref().display()));
    let mut input = child.stdin.take().expect("stdin");
    // The action may exit without reading stdin (unsupported actions): ignore EPIPE.
    let _ = input.write_all(stdin);
    drop(input);
    Outcome::from(child.wait_with_output().expect("wait"))
}

/// Runs install.sh with the test build of backstop (no release build in tests).
pub fn install_sh(remotes: &Path, extra: &[&str]) -> Outcome {
    let script = repo_root().join("install.sh");
    let dir = remotes.to_str().expect("utf-8 path");
    let mut args = vec!["--binary", BACKSTOP, "--remotes-dir", dir];
    args.extend_from_slice(extra);
    run(script, &args, b"")
}

/// A downloader.sh shaped like OpenNebula's: a `case "$FROM" in` dispatch on the URL scheme,
/// then the chosen command run and its output written to the target. Written for these tests.
pub const DOWNLOADER_SH: &str = r#"#!/bin/bash
# test stand-in for OpenNebula's datastore/downloader.sh
[ "$1" = "--nodecomp" ] && shift
FROM="$1"
TO="$2"

case "$FROM" in
http://*|https://*)
    command="curl -sS '$FROM'"
    ;;
restic://*|restic+rbd://*)
    defs=`$(dirname $0)/restic_downloader.rb "$FROM" | grep -e '^command=' -e '^clean_command='`
    ret=$?
    [ $ret -ne 0 ] && exit $ret
    eval "$defs"
    ;;
*)
    command="cat '$FROM'"
    ;;
esac

if [ "$TO" = "-" ]; then
    eval "$command" || { echo "Error copying" >&2; exit 1; }
else
    eval "$command" > "$TO" || { echo "Error copying" >&2; exit 1; }
fi
[ -n "$clean_command" ] && eval "$clean_command"
exit 0
"#;

/// `len` bytes that do not compress (xorshift from `seed`).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn write_exec(path: &Path, content: &str) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, content).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Driver contract §15: the actions a backup datastore refuses.
pub const UNSUPPORTED: &[&str] = &[
    "cp",
    "mkfs",
    "clone",
    "snap_delete",
    "snap_revert",
    "snap_flatten",
    "export",
];

/// Driver contract §4 and §9.2: the transfer-manager actions backstop replaces with --with-tm.
pub const TM_ACTIONS: &[&str] = &[
    "prebackup",
    "prebackup_live",
    "postbackup",
    "postbackup_live",
    "restore",
];

/// A remotes tree with what a stock front-end has that backstop touches.
pub fn stock_remotes(root: &Path) {
    write_exec(&root.join("datastore/downloader.sh"), DOWNLOADER_SH);
    for a in [
        "backup",
        "monitor",
        "rm",
        "stat",
        "restore",
        "ls",
        "increment_flatten",
        "backup_cancel",
    ] {
        write_exec(
            &root.join("datastore/restic").join(a),
            &format!("#!/usr/bin/env ruby\n# stock restic {a}\n"),
        );
    }
    for a in ["cp", "mkfs"] {
        write_exec(
            &root.join("datastore/restic").join(a),
            &format!("#!/bin/sh\necho '{a}: Operation not supported' >&2\nexit 1\n"),
        );
    }
    write_exec(
        &root.join("datastore/restic/restic.rb"),
        "# stock library\n",
    );
    write_exec(
        &root.join("datastore/restic_downloader.rb"),
        "#!/usr/bin/env ruby\n# stock downloader\n",
    );
    for a in TM_ACTIONS.iter().chain(&["clone"]) {
        write_exec(
            &root.join("tm/qcow2").join(a),
            &format!("#!/usr/bin/env ruby\n# stock qcow2 {a}\n"),
        );
    }
    // As in OpenNebula: tm/shared is a link to tm/qcow2, and tm/ssh links its actions into shared.
    std::os::unix::fs::symlink("qcow2", root.join("tm/shared")).expect("symlink");
    fs::create_dir_all(root.join("tm/ssh")).expect("mkdir");
    for a in [
        "prebackup",
        "prebackup_live",
        "postbackup",
        "postbackup_live",
    ] {
        std::os::unix::fs::symlink(format!("../shared/{a}"), root.join("tm/ssh").join(a))
            .expect("symlink");
    }
    write_exec(
        &root.join("tm/ssh/restore"),
        "#!/usr/bin/env ruby\n# stock ssh restore\n",
    );
    for a in TM_ACTIONS.iter().chain(&["clone"]) {
        write_exec(
            &root.join("tm/ceph").join(a),
            &format!("#!/usr/bin/env ruby\n# stock ceph {a}\n"),
        );
    }
}

/// Every entry of a tree: relative path -> (kind, content or link target, mode, mtime).
pub fn snapshot(root: &Path) -> BTreeMap<String, (String, Vec<u8>, u32, i64)> {
    let mut map = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, map: &mut BTreeMap<String, (String, Vec<u8>, u32, i64)>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let rel = path
                .strip_prefix(root)
                .expect("prefix")
                .to_string_lossy()
                .into_owned();
            let m = fs::symlink_metadata(&path).expect("metadata");
            let mode = m.mode() & 0o7777;
            if m.file_type().is_symlink() {
                let target = fs::read_link(&path).expect("readlink");
                map.insert(
                    rel,
                    (
                        "link".into(),
                        target.to_string_lossy().into_owned().into_bytes(),
                        0,
                        0,
                    ),
                );
            } else if m.is_dir() {
                map.insert(rel, ("dir".into(), Vec::new(), mode, 0));
                walk(root, &path, map);
            } else {
                map.insert(
                    rel,
                    (
                        "file".into(),
                        fs::read(&path).expect("read"),
                        mode,
                        m.mtime_nsec() + m.mtime() * 1_000_000_000,
                    ),
                );
            }
        }
    }
    walk(root, root, &mut map);
    map
}

/// The snapshot without modification times (for "put back as it was" comparisons).
pub fn contents(root: &Path) -> BTreeMap<String, (String, Vec<u8>, u32)> {
    snapshot(root)
        .into_iter()
        .map(|(k, (kind, content, mode, _))| (k, (kind, content, mode)))
        .collect()
}

pub fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

pub fn datastore_xml(base_path: &str, template: &str) -> String {
    format!(
        "<DATASTORE><ID>100</ID><NAME>backups</NAME><DS_MAD><![CDATA[backstop]]></DS_MAD>\
         <TM_MAD><![CDATA[-]]></TM_MAD><BASE_PATH><![CDATA[{base_path}]]></BASE_PATH><TYPE>3</TYPE>\
         <TEMPLATE><RESTIC_PASSWORD><![CDATA[hunter2-secret]]></RESTIC_PASSWORD>{template}</TEMPLATE></DATASTORE>"
    )
}

pub fn action_data(parts: &[&str]) -> String {
    format!(
        "<DS_DRIVER_ACTION_DATA>{}</DS_DRIVER_ACTION_DATA>",
        parts.concat()
    )
}

/// Flips a byte inside the stored blob of chunk `chunk` of `path` in snapshot `snapshot` of the
/// local repository `repo` (as a bad disk would); the blob's id.
pub fn damage_blob(
    repo: &Path,
    pw: &str,
    snapshot: &str,
    path: &str,
    chunk: usize,
) -> backstop_datastore::repo::format::RepoId {
    use backstop_datastore::repo::Repo;
    use backstop_storage::local::LocalBackend;
    let r = Repo::open(std::sync::Arc::new(LocalBackend::new(repo)), pw).expect("open");
    let (_, snap) = r.find_snapshot(snapshot).expect("snapshot");
    let known = r.index().expect("index");
    let node = r
        .file_node(&snap, path, &known)
        .expect("node")
        .expect("file");
    let blob = node.content.expect("content")[chunk];
    let at = known.data(&blob).expect("locate");
    let hex = at.pack.to_hex();
    let pack = repo.join("data").join(&hex[..2]).join(&hex);
    let mut bytes = fs::read(&pack).expect("pack");
    bytes[at.offset as usize + 30] ^= 0x10;
    fs::write(&pack, bytes).expect("damage");
    blob
}

/// A time of the runner's JSON output (RFC 3339, docs/json.md) as epoch milliseconds; panics
/// on anything else, so a field that is not one fails the test that reads it.
pub fn json_ms(v: &serde_json::Value) -> i64 {
    v.as_str()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .unwrap_or_else(|| panic!("{v} is not an RFC 3339 time"))
        .as_millisecond()
}

/// The same, in seconds.
pub fn json_secs(v: &serde_json::Value) -> i64 {
    json_ms(v).div_euclid(1000)
}
