//! Backups the stock OpenNebula restic driver made: the real restic binary stores a chain in the
//! stock layout (the staged `disk.<id>.<inc>` qcow2 files and `vm.xml`, tag `one-<vm>`), then
//! backstop's actions take over, as after a drop-in install: stat, ls, the downloader (a stock
//! FULL as stored, a chain rebuilt), restore, a backup that extends the stock chain, one more
//! on top, increment_flatten merging stock increments into a complete image, and rm.
//! `restic check --read-data` after every step that writes. The datastore comes from a MOCK
//! oned for the downloader and restore.

use crate::cloud::{Cloud, DISKS, ONED_SESSION, VM, parse_backup_line};
use crate::oned_mock::{MockOned, failed, ok};
use crate::support;
use backstop_protocol::xmlrpc::Value;
use std::fs;
use std::path::{Path, PathBuf};

pub(crate) fn compare(qcow2: &Path, raw: &Path) {
    let out = std::process::Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "raw"])
        .arg(qcow2)
        .arg(raw)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "{} differs from {}: {}",
        qcow2.display(),
        raw.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_chain_the_stock_driver_stored_keeps_working_under_backstop() {
    stock_chain(Cloud::start_as("backstop"));
}

/// The same, with backstop installed drop-in (`--replace-stock`): DS_MAD `restic`, `restic://`
/// URLs, the stock downloader's path.
#[test]
fn a_chain_the_stock_driver_stored_keeps_working_with_backstop_installed_drop_in() {
    stock_chain(Cloud::start_as("restic"));
}

/// The same on an S3 datastore: the chain stock 7.4 stores with `RESTIC_BACKEND=S3` (the real
/// restic on the same bucket and path), taken over by backstop installed drop-in.
#[test]
fn a_chain_the_stock_driver_stored_on_s3_keeps_working_with_backstop_installed_drop_in() {
    stock_chain(Cloud::start_as_s3("restic", false));
}

/// The front-end's side for the downloader and restore: a MOCK oned (XML-RPC; no real one
/// can run here) serving datastore 100, and the session files oned's drivers read.
pub(crate) struct FrontEnd {
    _oned: MockOned,
    env: Vec<(&'static str, String)>,
}

impl FrontEnd {
    pub(crate) fn start(cloud: &Cloud, ds: &str) -> FrontEnd {
        let served = ds.to_string();
        let oned = MockOned::start(
            |s| s == ONED_SESSION || s.starts_with("serveradmin:alice:"),
            move |method, params| match (method, params) {
                ("one.datastore.info", [Value::Int(100), Value::Bool(true)]) => {
                    ok(Value::Str(served.clone()))
                }
                ("one.image.allocate", _) => ok(Value::Int(60)),
                ("one.template.allocate", _) => ok(Value::Int(61)),
                _ => failed("no such object", 1024),
            },
        );
        let auth = cloud.dir.path().join("one_auth");
        fs::write(&auth, format!("{ONED_SESSION}\n")).expect("auth");
        let cipher = cloud.dir.path().join("onegate_auth");
        fs::write(&cipher, "serveradmin:x\n").expect("cipher");
        let env = vec![
            ("ONE_XMLRPC", oned.endpoint.clone()),
            ("ONE_AUTH", auth.display().to_string()),
            ("ONE_CIPHER_AUTH", cipher.display().to_string()),
        ];
        FrontEnd { _oned: oned, env }
    }

    pub(crate) fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    /// downloader.sh of `url` into `<test dir>/<name>`, which must succeed.
    pub(crate) fn download(&self, cloud: &Cloud, url: &str, name: &str) -> PathBuf {
        let target = cloud.dir.path().join(name);
        let out = support::run_env(
            cloud.remotes.join("datastore/downloader.sh"),
            &[url, target.to_str().expect("utf-8")],
            b"",
            &self.env(),
        );
        assert_eq!(out.code, Some(0), "download {url}: {}", out.stderr);
        target
    }
}

fn stock_chain(cloud: Cloud) {
    let mad = cloud.mad;
    cloud.create_disks();
    let staging = cloud.staging();
    let raws = cloud.dir.path().join("raws");
    fs::create_dir_all(&raws).expect("raws");
    let save = |inc: u64| {
        for (d, _) in DISKS {
            fs::write(raws.join(format!("disk.{d}.{inc}.raw")), cloud.raw(d)).expect("raw");
        }
    };
    fs::create_dir_all(cloud.repo().parent().expect("parent")).expect("base");
    cloud.restic_ok(&["init"]);

    // The stock driver: FULL and 2 INCREMENTs, each staged file backed up by restic itself.
    let mut sources: Vec<String> = Vec::new();
    for inc in 0..3u64 {
        if inc > 0 {
            cloud.change_disks(inc, 8);
        }
        let vm_xml = cloud.vm_xml(inc as i64 - 1, if inc == 0 { -1 } else { 40 });
        cloud.stage(inc, &vm_xml);
        let mut args: Vec<String> = vec!["backup".into(), "--json".into(), "--tag".into()];
        args.push(format!("one-{VM}"));
        for (d, _) in DISKS {
            args.push(
                staging
                    .join(format!("disk.{d}.{inc}"))
                    .display()
                    .to_string(),
            );
        }
        args.push(staging.join("vm.xml").display().to_string());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = String::from_utf8_lossy(&cloud.restic_ok(&refs)).to_string();
        let id = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v["snapshot_id"].as_str().map(|s| s[..8].to_string()))
            .expect("restic snapshot id");
        sources.push(id);
        save(inc);
    }
    let ds = cloud.datastore_xml_with(&format!(
        "<RESTIC_TMP_DIR><![CDATA[{}]]></RESTIC_TMP_DIR>",
        cloud.dir.path().join("fe-tmp").display()
    ));
    fs::create_dir_all(cloud.dir.path().join("fe-tmp")).expect("tmp");
    let fe = FrontEnd::start(&cloud, &ds);
    let link = |chain: &[String], upto: usize| {
        chain[..=upto]
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{i}:{s}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let download = |url: &str, name: &str| fe.download(&cloud, url, name);
    let env = fe.env();
    let tmp_is_empty = || {
        fs::read_dir(cloud.dir.path().join("fe-tmp"))
            .expect("tmp")
            .next()
            .is_none()
    };

    // stat and ls read the stock snapshots.
    let url = |chain: &[String], upto: usize, disk: u32, file_inc: usize| {
        format!(
            "{mad}://100//{}{}/disk.{disk}.{file_inc}",
            link(chain, upto),
            staging.display()
        )
    };
    let img = format!(
        "<IMAGE><PATH><![CDATA[{}]]></PATH><SIZE>0</SIZE></IMAGE>",
        url(&sources, 2, 0, 0)
    );
    let out = cloud.ds_action("stat", "5", &[&img, &ds]);
    assert_eq!(out.stdout, "48\n", "stat: {}", out.stderr);
    let chain = |s: &[String]| -> Vec<(u64, String)> {
        s.iter()
            .enumerate()
            .map(|(k, x)| (k as u64, x.clone()))
            .collect()
    };
    let image_of = |s: &[String]| {
        let c = chain(s);
        let refs: Vec<(u64, &str)> = c.iter().map(|(k, x)| (*k, x.as_str())).collect();
        cloud.image_xml(&refs)
    };
    let stdin = format!(
        "<DS_DRIVER_ACTION_DATA>{ds}{}{}</DS_DRIVER_ACTION_DATA>",
        cloud.vm_xml(2, 40),
        image_of(&sources)
    );
    let out = support::run(cloud.action("ls"), &["-i", "2"], stdin.as_bytes());
    assert_eq!(out.code, Some(0), "ls: {}", out.stderr);
    assert!(
        out.stdout.contains(&url(&sources, 2, 1, 2)),
        "{}",
        out.stdout
    );

    // The downloader: the FULL as stored; increment 2 rebuilt from the chain (then cleaned).
    for (d, _) in DISKS {
        let q = download(&url(&sources, 0, d, 0), &format!("full.{d}.qcow2"));
        compare(&q, &raws.join(format!("disk.{d}.0.raw")));
        let q = download(&url(&sources, 2, d, 2), &format!("inc2.{d}.qcow2"));
        compare(&q, &raws.join(format!("disk.{d}.2.raw")));
        assert!(tmp_is_empty(), "clean_command left the rebuilt chain");
    }

    // restore reads the stock vm.xml and disk list.
    let data = format!(
        "<DS_DRIVER_ACTION_DATA>{}{ds}<DESTINATION_DS_ID>1</DESTINATION_DS_ID>\
         <TEMPLATE><USERNAME>alice</USERNAME></TEMPLATE></DS_DRIVER_ACTION_DATA>",
        image_of(&sources)
    );
    let out = support::run_env(
        cloud.action("restore"),
        &["7"],
        support::b64(&data).as_bytes(),
        &env,
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "61 60 60\n"),
        "restore: {}",
        out.stderr
    );

    // backstop takes over: increment 3 extends the stock chain (rebuilt once, stored whole),
    // increment 4 is an ordinary backstop increment on it.
    for inc in 3..5u64 {
        cloud.change_disks(inc, 8);
        let vm_xml = cloud.vm_xml(inc as i64 - 1, 40);
        cloud.stage(inc, &vm_xml);
        let (id, _) = parse_backup_line(&cloud.backup_to(&ds, &vm_xml));
        sources.push(id);
        save(inc);
        cloud.restic_ok(&["check", "--read-data"]);
        for (d, _) in DISKS {
            let path = format!("{}/disk.{d}.{inc}", staging.display());
            let data = cloud.restic_ok(&["dump", &sources[inc as usize], &path]);
            assert!(
                data == fs::read(raws.join(format!("disk.{d}.{inc}.raw"))).expect("raw"),
                "increment {inc} of disk {d} is not the disk"
            );
        }
    }
    assert!(tmp_is_empty(), "the backup left its rebuilt chain");

    // increment_flatten KEEP_LAST=3: increments 0..2 (stock qcow2 deltas) merge into one
    // complete image that takes increment 2's place; 3 and 4 stay.
    let out = cloud.ds_action(
        "increment_flatten",
        "40",
        &[
            &image_of(&sources),
            &ds,
            "<EXTRA_DATA><KEEP_LAST>3</KEEP_LAST></EXTRA_DATA>",
        ],
    );
    assert_eq!(out.code, Some(0), "increment_flatten: {}", out.stderr);
    let line = out.stdout.trim_end().to_string();
    let (_, links) = line.split_once(' ').expect("size and chain");
    let links: Vec<&str> = links.split(',').collect();
    assert_eq!(links.len(), 3, "{line}");
    assert!(links[0].starts_with("2:") && links[0] != format!("2:{}", sources[2]));
    assert_eq!(links[1], format!("3:{}", sources[3]));
    assert_eq!(links[2], format!("4:{}", sources[4]));
    assert!(tmp_is_empty(), "the flatten left its rebuilt chain");
    cloud.restic_ok(&["check", "--read-data"]);
    let snaps: serde_json::Value =
        serde_json::from_slice(&cloud.restic_ok(&["snapshots", "--json"])).expect("json");
    assert_eq!(snaps.as_array().map(Vec::len), Some(3), "{snaps}");
    let new_base = links[0][2..].to_string();
    for (d, _) in DISKS {
        let path = format!("{}/disk.{d}.2", staging.display());
        let data = cloud.restic_ok(&["dump", &new_base, &path]);
        assert!(
            data == fs::read(raws.join(format!("disk.{d}.2.raw"))).expect("raw"),
            "the merged base of disk {d} is not the disk at increment 2"
        );
    }
    // The flattened chain downloads at each of its increments.
    let flat: Vec<(u64, String)> = links
        .iter()
        .map(|l| {
            let (i, s) = l.split_once(':').expect("link");
            (i.parse().expect("id"), s.to_string())
        })
        .collect();
    for upto in 0..flat.len() {
        let chain_text = flat[..=upto]
            .iter()
            .map(|(i, s)| format!("{i}:{s}"))
            .collect::<Vec<_>>()
            .join(",");
        let inc = flat[upto].0;
        for (d, _) in DISKS {
            let u = format!(
                "{mad}://100//{chain_text}{}/disk.{d}.{inc}",
                staging.display()
            );
            let q = download(&u, &format!("flat.{d}.{inc}.qcow2"));
            compare(&q, &raws.join(format!("disk.{d}.{inc}.raw")));
        }
    }

    // rm of the flattened image.
    let refs: Vec<(u64, &str)> = flat.iter().map(|(k, s)| (*k, s.as_str())).collect();
    let out = cloud.ds_action("rm", "40", &[&cloud.image_xml(&refs), &ds]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), ""),
        "rm: {}",
        out.stderr
    );
    cloud.restic_ok(&["check", "--read-data"]);
    let snaps: serde_json::Value =
        serde_json::from_slice(&cloud.restic_ok(&["snapshots", "--json"])).expect("json");
    assert_eq!(snaps.as_array().map(Vec::len), Some(0), "{snaps}");
    assert!(tmp_is_empty());
}
