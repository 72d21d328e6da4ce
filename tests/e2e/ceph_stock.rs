//! rbd-format backups the stock driver made, taken over by backstop installed drop-in: the
//! first increment `rbd export --export-format 2` of snapshot `one_backup_0` (`disk.<id>.rbd2`),
//! then `rbd export-diff --from-snap one_backup_<n-1>` (`disk.<id>.<n>.rbdiff`), each stored by
//! the real restic binary in the stock layout (tag `one-<vm>`, vm.xml beside), against a real
//! single-node Ceph. Then stat, ls (`restic+rbd://` URLs), the downloader at every point and
//! into a Ceph image, the datastore's restore, increment_flatten (merging the rbd files into a
//! complete image), backstop's backup of the rbdiffs the stock Ceph TM goes on staging, and rm. The datastore comes from a MOCK oned.

use crate::ceph::{CephCloud, DISKS};
use crate::cephcluster::POOL;
use crate::cloud::VM;
use crate::stock::{FrontEnd, compare};
use crate::support;
use std::fs;

/// The stock staged file of disk `d` at increment `inc`.
fn stock_file(d: u32, inc: u64) -> String {
    if inc == 0 {
        format!("disk.{d}.rbd2")
    } else {
        format!("disk.{d}.{inc}.rbdiff")
    }
}

/// What the stock Ceph TM's prebackup stages for increment `inc` (snapshot `one_backup_<inc>`
/// and its rbd-format file per disk, vm.xml), after changing the disks; the raw images of the
/// snapshots go to `raws`. Returns the staged files.
fn stage_stock(cc: &CephCloud, inc: u64, raws: &std::path::Path) -> Vec<String> {
    let staging = cc.cloud.staging();
    for (d, _, image, mib) in DISKS {
        let pattern = 0x10 + 0x10 * inc as u8 + d as u8;
        cc.write(image, pattern, (inc * 7 + u64::from(d) * 3) % (mib - 4), 3);
    }
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).expect("staging");
    let mut files = Vec::new();
    for (d, _, image, _) in DISKS {
        let snap = format!("{POOL}/{image}@one_backup_{inc}");
        cc.ceph.rbd(&["snap", "create", &snap]);
        cc.ceph.rbd(&["snap", "protect", &snap]);
        let file = staging.join(stock_file(d, inc));
        let file_arg = file.to_str().expect("utf-8");
        if inc == 0 {
            // A write between the snapshot and the export belongs to the next point.
            cc.write(image, 0xee, 1, 1);
            cc.ceph.rbd(&[
                "export",
                "--no-progress",
                "--export-format",
                "2",
                &snap,
                file_arg,
            ]);
        } else {
            let from = format!("one_backup_{}", inc - 1);
            cc.ceph.rbd(&[
                "export-diff",
                "--no-progress",
                "--from-snap",
                &from,
                &snap,
                file_arg,
            ]);
        }
        let raw = cc.ceph.rbd_bytes(&["export", "--no-progress", &snap, "-"]);
        fs::write(raws.join(format!("disk.{d}.{inc}.raw")), raw).expect("raw");
        files.push(file.display().to_string());
    }
    let b64 = support::b64(&cc.vm_xml(inc as i64 - 1));
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(60)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    fs::write(staging.join("vm.xml"), format!("{}\n", lines.join("\n"))).expect("vm.xml");
    files.push(staging.join("vm.xml").display().to_string());
    files
}

/// Increments 0..=3 as the stock Ceph TM and restic driver stored them; their ids.
fn stock_rbd_backups(cc: &CephCloud, raws: &std::path::Path) -> Vec<String> {
    let mut sources = Vec::new();
    for inc in 0..4u64 {
        let mut args: Vec<String> = vec!["backup".into(), "--json".into(), "--tag".into()];
        args.push(format!("one-{VM}"));
        args.extend(stage_stock(cc, inc, raws));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = String::from_utf8_lossy(&cc.cloud.restic_ok(&refs)).to_string();
        let id = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v["snapshot_id"].as_str().map(|s| s[..8].to_string()))
            .expect("restic snapshot id");
        sources.push(id);
    }
    sources
}

#[test]
fn an_rbd_format_chain_the_stock_driver_stored_restores_flattens_and_is_removed() {
    let cc = CephCloud::start_as("restic");
    let cloud = &cc.cloud;
    let staging = cloud.staging();
    let raws = cloud.dir.path().join("raws");
    fs::create_dir_all(&raws).expect("raws");
    fs::create_dir_all(cloud.repo().parent().expect("parent")).expect("base");
    cloud.restic_ok(&["init"]);
    let sources = stock_rbd_backups(&cc, &raws);

    let tmp = cloud.dir.path().join("fe-tmp");
    fs::create_dir_all(&tmp).expect("tmp");
    let ds = cloud.datastore_xml_with(&format!(
        "<RESTIC_TMP_DIR><![CDATA[{}]]></RESTIC_TMP_DIR>",
        tmp.display()
    ));
    let fe = FrontEnd::start(cloud, &ds);
    let tmp_is_empty = || fs::read_dir(&tmp).expect("tmp").next().is_none();
    let chain = |links: &[(u64, String)]| {
        links
            .iter()
            .map(|(i, s)| format!("{i}:{s}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let stock: Vec<(u64, String)> = sources
        .iter()
        .enumerate()
        .map(|(k, s)| (k as u64, s.clone()))
        .collect();
    let image_of = |links: &[(u64, String)]| {
        let refs: Vec<(u64, &str)> = links.iter().map(|(k, s)| (*k, s.as_str())).collect();
        cloud
            .image_xml(&refs)
            .replace("<FORMAT><![CDATA[raw]]>", "<FORMAT><![CDATA[rbd]]>")
    };
    let url = |links: &[(u64, String)], file: &str| {
        format!(
            "restic+rbd://100//{}{}/{file}",
            chain(links),
            staging.display()
        )
    };

    // stat (from the saved VM) and ls (rbd URLs naming the last point's files).
    let img = format!(
        "<IMAGE><PATH><![CDATA[{}]]></PATH><SIZE>0</SIZE></IMAGE>",
        url(&stock, &stock_file(1, 3))
    );
    let out = cloud.ds_action("stat", "5", &[&img, &ds]);
    assert_eq!(out.stdout, "24\n", "stat: {}", out.stderr);
    let stdin = format!(
        "<DS_DRIVER_ACTION_DATA>{ds}{}{}</DS_DRIVER_ACTION_DATA>",
        cc.vm_xml(2),
        image_of(&stock)
    );
    let out = support::run(cloud.action("ls"), &["-i", "3"], stdin.as_bytes());
    assert_eq!(out.code, Some(0), "ls: {}", out.stderr);
    for (d, ..) in DISKS {
        let want = url(&stock, &stock_file(d, 3));
        assert!(out.stdout.contains(&want), "{want} in {}", out.stdout);
    }

    // The downloader rebuilds every point of both disks; the work directory goes afterwards.
    for upto in 0..4usize {
        for (d, ..) in DISKS {
            let u = url(&stock[..=upto], &stock_file(d, upto as u64));
            let q = fe.download(cloud, &u, &format!("stock.{d}.{upto}.qcow2"));
            compare(&q, &raws.join(format!("disk.{d}.{upto}.raw")));
            assert!(tmp_is_empty(), "clean_command left the rebuilt chain");
        }
    }
    // A chain with a link left out is refused, not rebuilt wrong.
    let gap = vec![stock[0].clone(), stock[2].clone()];
    let target = cloud.dir.path().join("gap.qcow2");
    let out = support::run_env(
        cloud.remotes.join("datastore/downloader.sh"),
        &[
            &url(&gap, &stock_file(0, 2)),
            target.to_str().expect("utf-8"),
        ],
        b"",
        &fe.env(),
    );
    assert!(
        out.code != Some(0)
            && out.stderr.contains(
                "disk.0.2.rbdiff (backup ") && out.stderr.contains(
                ") starts from snapshot one_backup_1, but the image rebuilt so far is at one_backup_0"
            ),
        "{out:?}"
    );
    assert!(tmp_is_empty(), "a refused chain left its work directory");

    // Into a Ceph image datastore: what its `cp` does with a download that is not a tarball
    // (convert to raw, `rbd import`).
    let q = cloud.dir.path().join("stock.0.3.qcow2");
    let imported = cloud.dir.path().join("import.raw");
    crate::cloud::sh_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            q.to_str().expect("utf-8"),
            imported.to_str().expect("utf-8"),
        ],
    );
    let target = format!("{POOL}/one-77");
    cc.ceph.rbd(&[
        "import",
        "--no-progress",
        imported.to_str().expect("utf-8"),
        &target,
    ]);
    assert!(
        cc.ceph
            .rbd_bytes(&["export", "--no-progress", &target, "-"])
            == fs::read(raws.join("disk.0.3.raw")).expect("raw"),
        "the image imported into Ceph is not the disk at increment 3"
    );

    // The datastore's restore reads the stock vm.xml and disk list.
    let data = format!(
        "<DS_DRIVER_ACTION_DATA>{}{ds}<DESTINATION_DS_ID>1</DESTINATION_DS_ID>\
         <TEMPLATE><USERNAME>alice</USERNAME></TEMPLATE></DS_DRIVER_ACTION_DATA>",
        image_of(&stock)
    );
    let out = support::run_env(
        cloud.action("restore"),
        &["7"],
        support::b64(&data).as_bytes(),
        &fe.env(),
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "61 60 60\n"),
        "restore: {}",
        out.stderr
    );

    // increment_flatten KEEP_LAST=2: the rbd2 and two rbdiffs merge into one complete image
    // (increment 2's place, stored as disk.<id>.2); the last rbdiff stays on it.
    let out = cloud.ds_action(
        "increment_flatten",
        "40",
        &[
            &image_of(&stock),
            &ds,
            "<EXTRA_DATA><KEEP_LAST>2</KEEP_LAST></EXTRA_DATA>",
        ],
    );
    assert_eq!(out.code, Some(0), "increment_flatten: {}", out.stderr);
    let line = out.stdout.trim_end().to_string();
    let (_, links) = line.split_once(' ').expect("size and chain");
    let flat: Vec<(u64, String)> = links
        .split(',')
        .map(|l| {
            let (i, s) = l.split_once(':').expect("link");
            (i.parse().expect("id"), s.to_string())
        })
        .collect();
    assert_eq!(flat.len(), 2, "{line}");
    assert!(flat[0].0 == 2 && flat[0].1 != sources[2], "{line}");
    assert_eq!(flat[1], (3, sources[3].clone()));
    assert!(tmp_is_empty(), "the flatten left its rebuilt chain");
    cloud.restic_ok(&["check", "--read-data"]);
    for (d, ..) in DISKS {
        let path = format!("{}/disk.{d}.2", staging.display());
        assert!(
            cloud.restic_ok(&["dump", &flat[0].1, &path])
                == fs::read(raws.join(format!("disk.{d}.2.raw"))).expect("raw"),
            "the merged base of disk {d} is not the disk at increment 2"
        );
        let q = fe.download(cloud, &url(&flat[..1], &format!("disk.{d}.2")), "f2.qcow2");
        compare(&q, &raws.join(format!("disk.{d}.2.raw")));
        let q = fe.download(cloud, &url(&flat, &stock_file(d, 3)), "f3.qcow2");
        compare(&q, &raws.join(format!("disk.{d}.3.raw")));
    }

    // The stock Ceph TM goes on staging rbdiffs (the chain's format is rbd); backstop's backup
    // applies each on its parent rebuilt as raw (the merged image and a stock rbdiff, then a
    // backstop image) and stores a complete disk.
    let mut chain_now = flat.clone();
    for inc in 4..6u64 {
        stage_stock(&cc, inc, &raws);
        let (id, _) =
            crate::cloud::parse_backup_line(&cloud.backup_to(&ds, &cc.vm_xml(inc as i64 - 1)));
        chain_now.push((inc, id.clone()));
        assert!(tmp_is_empty(), "the backup left its rebuilt chain");
        cloud.restic_ok(&["check", "--read-data"]);
        for (d, ..) in DISKS {
            let path = format!("{}/disk.{d}.{inc}", staging.display());
            assert!(
                cloud.restic_ok(&["dump", &id, &path])
                    == fs::read(raws.join(format!("disk.{d}.{inc}.raw"))).expect("raw"),
                "increment {inc} of disk {d} is not the snapshot"
            );
            let q = fe.download(
                cloud,
                &url(&chain_now, &format!("disk.{d}.{inc}")),
                "b.qcow2",
            );
            compare(&q, &raws.join(format!("disk.{d}.{inc}.raw")));
        }
    }

    // rm of the whole chain.
    let refs: Vec<(u64, &str)> = chain_now.iter().map(|(k, s)| (*k, s.as_str())).collect();
    let out = cloud.ds_action("rm", "40", &[&cloud.image_xml(&refs), &ds]);
    assert_eq!(out.code, Some(0), "rm: {}", out.stderr);
    cloud.restic_ok(&["check", "--read-data"]);
    let snaps: serde_json::Value =
        serde_json::from_slice(&cloud.restic_ok(&["snapshots", "--json"])).expect("json");
    assert_eq!(snaps.as_array().map(Vec::len), Some(0), "{snaps}");
    assert!(tmp_is_empty());
}
