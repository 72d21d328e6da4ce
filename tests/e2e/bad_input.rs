//! Every datastore action against each class of bad circumstance the issue lists: a wrong
//! password, a missing repository, a lock held past the wait, an unreachable backup server, one
//! whose host key is unknown, a full disk on the backup server. Each gets one clear stderr line and exit 1 (or, where the
//! action is idempotent, success with nothing done), and the repository is left exactly as it
//! was: same files, same sizes, and `restic check` clean. The datastore for the downloader and
//! restore comes from a MOCK oned (oned cannot run here).

use crate::cloud::{Cloud, ONED_SESSION, PASSWORD, VM, parse_backup_line};
use crate::oned_mock::{MockOned, failed, ok};
use crate::support::{self, Outcome};
use backstop_datastore::repo::Repo;
use backstop_datastore::repo::lock::RetryLock;
use backstop_protocol::xmlrpc::Value;
use backstop_storage::local::LocalBackend;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Every file of a repository with its size.
fn listing(root: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(m) = e.metadata() {
                let rel = p.strip_prefix(root).expect("prefix").display().to_string();
                out.insert(rel, m.len());
            }
        }
    }
    out
}

struct Setup {
    cloud: Cloud,
    sources: Vec<String>,
    oned: MockOned,
    served: Arc<Mutex<String>>,
    auth: std::path::PathBuf,
    cipher_auth: std::path::PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let cloud = Cloud::start();
        cloud.create_disks();
        let mut sources = Vec::new();
        for increment in 0..2u64 {
            if increment > 0 {
                cloud.change_disks(increment, 6);
            }
            let vm_xml = cloud.vm_xml(increment as i64 - 1, if increment == 0 { -1 } else { 40 });
            cloud.stage(increment, &vm_xml);
            sources.push(parse_backup_line(&cloud.backup(&vm_xml)).0);
        }
        let served = Arc::new(Mutex::new(cloud.datastore_xml()));
        let oned = {
            let served = served.clone();
            MockOned::start(
                |s| s == ONED_SESSION || s.starts_with("serveradmin:alice:"),
                move |method, params| match (method, params) {
                    ("one.datastore.info", [Value::Int(100), Value::Bool(true)]) => {
                        ok(Value::Str(served.lock().expect("served").clone()))
                    }
                    ("one.image.allocate" | "one.template.allocate", _) => ok(Value::Int(500)),
                    _ => failed(&format!("[{method}] Error getting datastore"), 1024),
                },
            )
        };
        let auth = cloud.dir.path().join("one_auth");
        fs::write(&auth, format!("{ONED_SESSION}\n")).expect("one_auth");
        let cipher_auth = cloud.dir.path().join("onegate_auth");
        fs::write(&cipher_auth, "serveradmin:srv\n").expect("onegate_auth");
        Setup {
            cloud,
            sources,
            oned,
            served,
            auth,
            cipher_auth,
        }
    }

    fn chain(&self) -> String {
        self.sources
            .iter()
            .enumerate()
            .map(|(k, s)| format!("{k}:{s}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn url(&self, disk: u32) -> String {
        format!(
            "backstop://100//{}{}/disk.{disk}.1",
            self.chain(),
            self.cloud.staging().display()
        )
    }

    /// Runs `action` the way oned does, against datastore document `ds`.
    fn run(&self, action: &str, ds: &str) -> Outcome {
        *self.served.lock().expect("served") = ds.to_string();
        let chain: Vec<(u64, &str)> = self
            .sources
            .iter()
            .enumerate()
            .map(|(k, s)| (k as u64, s.as_str()))
            .collect();
        let image = self.cloud.image_xml(&chain);
        let env = [
            ("ONE_XMLRPC", self.oned.endpoint.as_str()),
            ("ONE_AUTH", self.auth.to_str().expect("utf-8")),
            ("ONE_CIPHER_AUTH", self.cipher_auth.to_str().expect("utf-8")),
        ];
        let c = &self.cloud;
        match action {
            "backup" => {
                let vm_xml = c.vm_xml(1, 40);
                c.stage(2, &vm_xml);
                c.backup_to(ds, &vm_xml)
            }
            "monitor" => c.ds_action("monitor", "100", &[ds]),
            "stat" => {
                let img = format!(
                    "<IMAGE><PATH><![CDATA[{}]]></PATH><SIZE>0</SIZE></IMAGE>",
                    self.url(0)
                );
                c.ds_action("stat", "5", &[&img, ds])
            }
            "ls" => {
                let stdin = format!(
                    "<DS_DRIVER_ACTION_DATA>{ds}{}{image}</DS_DRIVER_ACTION_DATA>",
                    c.vm_xml(1, 40)
                );
                support::run(c.action("ls"), &["-i", "1"], stdin.as_bytes())
            }
            "rm" => c.ds_action("rm", "40", &[&image, ds]),
            "increment_flatten" => c.ds_action(
                "increment_flatten",
                "40",
                &[
                    &image,
                    ds,
                    "<EXTRA_DATA><KEEP_LAST>1</KEEP_LAST></EXTRA_DATA>",
                ],
            ),
            "restore" => {
                let data = format!(
                    "<DS_DRIVER_ACTION_DATA>{image}{ds}<DESTINATION_DS_ID>1</DESTINATION_DS_ID>\
                     <TEMPLATE><USERNAME>alice</USERNAME></TEMPLATE></DS_DRIVER_ACTION_DATA>"
                );
                support::run_env(
                    c.action("restore"),
                    &["7"],
                    support::b64(&data).as_bytes(),
                    &env,
                )
            }
            "downloader" => support::run_env(
                c.remotes.join("datastore/backstop_downloader"),
                &[&self.url(1)],
                b"",
                &env,
            ),
            other => panic!("no action {other}"),
        }
    }
}

const READERS: &[&str] = &[
    "stat",
    "ls",
    "restore",
    "downloader",
    "increment_flatten",
    "rm",
    "backup",
];

/// Asserts one stderr line naming the action and containing `want`, exit 1, no stdout.
fn one_line(action: &str, out: &Outcome, want: &str) {
    let name = if action == "downloader" {
        "backstop_downloader"
    } else {
        action
    };
    assert_eq!(out.code, Some(1), "{action}: {out:?}");
    assert_eq!(out.stdout, "", "{action}: stdout must be empty: {out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{action}: {}", out.stderr);
    assert!(
        out.stderr.starts_with(&format!("{name}: ")) && out.stderr.contains(want),
        "{action}: expected {want:?} in {:?}",
        out.stderr
    );
}

#[test]
fn every_action_answers_bad_circumstances_with_one_line_and_leaves_the_repository_as_it_was() {
    let s = Setup::new();
    let repo_dir = s.cloud.repo();
    let before = listing(&repo_dir);
    let unchanged = |what: &str| {
        assert_eq!(
            listing(&repo_dir),
            before,
            "{what} changed the repository's files"
        );
    };

    // A wrong password.
    let wrong = s
        .cloud
        .datastore_xml()
        .replace(PASSWORD, "not-the-password");
    for action in READERS {
        let out = s.run(action, &wrong);
        one_line(action, &out, "wrong password");
        assert!(!out.stderr.contains("not-the-password"), "{}", out.stderr);
        unchanged(&format!("{action} with a wrong password"));
    }

    // A repository that does not exist: readers say so; rm has nothing to remove.
    let empty_base = s.cloud.dir.path().join("bks/empty");
    fs::create_dir_all(&empty_base).expect("empty base");
    let missing = s.cloud.datastore_xml().replace(
        &s.cloud.base_path.display().to_string(),
        &empty_base.display().to_string(),
    );
    for action in ["stat", "ls", "restore", "downloader", "increment_flatten"] {
        let out = s.run(action, &missing);
        one_line(action, &out, "no repository");
    }
    let out = s.run("rm", &missing);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), ""), "{out:?}");
    assert!(
        fs::read_dir(&empty_base).expect("read").next().is_none(),
        "rm created something in an empty BASE_PATH"
    );

    // An unreachable backup server (nothing listens on 127.0.0.9:22).
    let unreachable = s.cloud.datastore_xml().replace(
        "<RESTIC_SFTP_SERVER><![CDATA[bks]]>",
        "<RESTIC_SFTP_SERVER><![CDATA[127.0.0.9]]>",
    );
    for action in READERS.iter().chain(&["monitor"]) {
        let out = s.run(action, &unreachable);
        one_line(action, &out, "127.0.0.9");
        unchanged(&format!("{action} with an unreachable server"));
    }

    // A backup server whose host key is not known: refused, never trusted on first use.
    let stranger = s.cloud.datastore_xml().replace(
        "<RESTIC_SFTP_SERVER><![CDATA[bks]]>",
        "<RESTIC_SFTP_SERVER><![CDATA[stranger]]>",
    );
    for action in READERS {
        let out = s.run(action, &stranger);
        one_line(action, &out, "unknown host key for stranger");
        unchanged(&format!("{action} with an unknown host key"));
    }
    let out = s.run("monitor", &stranger);
    one_line("monitor", &out, "Host key verification failed");

    // An exclusive lock (a prune or check elsewhere) held past BACKSTOP_LOCK_WAIT.
    let holder = Repo::open(Arc::new(LocalBackend::new(&repo_dir)), PASSWORD).expect("open");
    let lock = holder
        .lock(true, RetryLock(std::time::Duration::ZERO))
        .expect("hold the lock");
    let during = listing(&repo_dir);
    let short_wait = s
        .cloud
        .datastore_xml_with("<BACKSTOP_LOCK_WAIT><![CDATA[1]]></BACKSTOP_LOCK_WAIT>");
    // ls only lists snapshots, without a lock (as the stock driver's `--no-lock`): it answers.
    let out = s.run("ls", &short_wait);
    assert_eq!(out.code, Some(0), "ls under an exclusive lock: {out:?}");
    assert!(out.stdout.starts_with("{\"0\":"), "{}", out.stdout);
    for action in READERS.iter().filter(|a| **a != "ls") {
        let out = s.run(action, &short_wait);
        one_line(action, &out, "repository locked by ");
        assert!(
            out.stderr.contains(&format!("pid {}", std::process::id())),
            "{action}: the holder is named: {}",
            out.stderr
        );
        assert_eq!(
            listing(&repo_dir),
            during,
            "{action} changed the repository while it was locked"
        );
    }
    drop(lock);
    unchanged("the lock's release");

    s.cloud.restic_ok(&["check", "--read-data"]);
    let snaps: serde_json::Value =
        serde_json::from_slice(&s.cloud.restic_ok(&["snapshots", "--json"])).expect("json");
    assert_eq!(snaps.as_array().map(Vec::len), Some(2));
    let _ = VM;
}

/// A small tmpfs, unmounted when dropped (the tests run as root, as CI does).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(path).expect("mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs to fill a disk and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// The backup server's disk fills up during a backup: one line naming it, exit 1, no snapshot,
/// no lock and no temporary file left; after space is freed the next backup works.
#[test]
fn a_full_disk_on_the_backup_server_fails_the_backup_cleanly() {
    let cloud = Cloud::start();
    cloud.create_disks();
    // Incompressible data, so the backup needs more room than the disk has.
    let noise = cloud.dir.path().join("noise");
    fs::write(&noise, support::noise(6 << 20, 0x9e37_79b9_7f4a_7c15)).expect("noise");
    for d in [0, 1] {
        let disk = cloud.disk(d);
        let out = std::process::Command::new("qemu-io")
            .args(["-f", "qcow2", "-c"])
            .arg(format!("write -s {} 0 6M", noise.display()))
            .arg(&disk)
            .output()
            .expect("qemu-io");
        assert!(out.status.success(), "{out:?}");
    }
    let small = cloud.dir.path().join("bks/small");
    let _fs = Tmpfs::mount(&small, "3m");
    let ds = cloud.datastore_xml().replace(
        &cloud.base_path.display().to_string(),
        &small.display().to_string(),
    );
    let vm_xml = cloud.vm_xml(-1, -1);
    cloud.stage(0, &vm_xml);
    let out = cloud.backup_to(&ds, &vm_xml);
    one_line("backup", &out, "No space left on device");
    let repo = small.join(VM.to_string());
    let names = listing(&repo);
    assert!(names.contains_key("config"), "{names:?}");
    for name in names.keys() {
        assert!(
            !name.starts_with("snapshots/") && !name.starts_with("locks/") && !name.contains("tmp"),
            "left behind: {name} ({names:?})"
        );
    }
    let check = std::process::Command::new("restic")
        .args(["--no-cache", "--repo"])
        .arg(&repo)
        .arg("check")
        .env("RESTIC_PASSWORD", PASSWORD)
        .output()
        .expect("restic");
    assert!(check.status.success(), "{check:?}");

    // Room again: the same backup succeeds.
    let out = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&small)
        .output()
        .expect("remount");
    assert!(out.status.success(), "{out:?}");
    cloud.stage(0, &vm_xml);
    parse_backup_line(&cloud.backup_to(&ds, &vm_xml));
}
