//! Pull mode against push (direct mode) on the same disk, in one run (docs/pull-mode.md).
//!
//! One qcow2 disk (the benchmark's image, converted) of a stopped VM; backstop's own
//! prebackup and postbackup; the datastore's `backup` action run as oned runs it, with the
//! "host" reached over a loopback sshd. Push: the host step reads the disk and writes the
//! repository (a local path). Pull: the host serves the disk with qemu-nbd and the front-end
//! reads it through ssh's forwarded unix socket and writes the same kind of repository. Each
//! does a FULL, then an increment after 5 % of the disk was rewritten in 50 places through
//! qemu (so the dirty bitmap records it); both increments come from the same bitmap (the push
//! run's postbackup reports a failure, which keeps the parent's bitmap, as a retry would). Only
//! the `backup` action is timed: prebackup and postbackup are the same in both modes. Every
//! snapshot's dump must hash like the disk.

use crate::data::{Gen, MIB, generate, sha256_file};
use crate::run::{PASSWORD, capture, q, settle, timed};
use std::fs;
use std::path::Path;

const VM: u64 = 7;

fn vm_xml(last_increment: i64, size_mib: u64) -> String {
    format!(
        "<VM><ID>{VM}</ID><UID>0</UID><NAME>bench</NAME><STATE>8</STATE><LCM_STATE>70</LCM_STATE>\
         <DEPLOY_ID>one-{VM}</DEPLOY_ID><TEMPLATE><DISK><DISK_ID>0</DISK_ID><FORMAT>qcow2</FORMAT>\
         <SIZE>{size_mib}</SIZE><TARGET>vda</TARGET><TYPE>FILE</TYPE></DISK><VMID>{VM}</VMID></TEMPLATE>\
         <USER_TEMPLATE/><HISTORY_RECORDS><HISTORY><HOSTNAME>benchhost</HOSTNAME><HID>0</HID>\
         <DS_ID>0</DS_ID><TM_MAD>qcow2</TM_MAD><VM_MAD>kvm</VM_MAD></HISTORY></HISTORY_RECORDS>\
         <BACKUPS><BACKUP_CONFIG><MODE>INCREMENT</MODE><INCREMENT_MODE>CBT</INCREMENT_MODE>\
         <LAST_INCREMENT_ID>{last_increment}</LAST_INCREMENT_ID>\
         <INCREMENTAL_BACKUP_ID>{}</INCREMENTAL_BACKUP_ID><LAST_DATASTORE_ID>100</LAST_DATASTORE_ID>\
         </BACKUP_CONFIG><BACKUP_IDS/></BACKUPS></VM>",
        if last_increment < 0 { -1 } else { 40 }
    )
}

fn datastore_xml(base: &Path, pull: bool) -> String {
    format!(
        "<DATASTORE><ID>100</ID><NAME>backups</NAME><DS_MAD>backstop</DS_MAD><TM_MAD>-</TM_MAD>\
         <BASE_PATH>{}</BASE_PATH><TYPE>3</TYPE><TEMPLATE><RESTIC_PASSWORD>{PASSWORD}</RESTIC_PASSWORD>\
         <BACKSTOP_CACHE_DIR>off</BACKSTOP_CACHE_DIR>{}</TEMPLATE></DATASTORE>",
        base.display(),
        if pull {
            "<BACKUP_PULL>YES</BACKUP_PULL>"
        } else {
            ""
        }
    )
}

/// Rewrites 5 % of the disk in 50 places through qemu-io (random data), so that the disk's
/// dirty bitmap records it.
fn rewrite_through_qemu(dir: &Path, disk: &Path, size: u64) {
    let len = size / 20 / 50;
    let source = dir.join("rewrite.bin");
    let mut buf = vec![0u8; len as usize];
    let mut g = Gen(0xfeed);
    g.fill(&mut buf);
    fs::write(&source, &buf).expect("rewrite source");
    let mut script = format!("qemu-io -f qcow2 {}", q(disk));
    let slot = size / 50;
    for k in 0..50u64 {
        let off = (k * slot + g.next() % (slot - len)) / 65_536 * 65_536;
        script.push_str(&format!(
            " -c 'write -q -s {} {off} {len}'",
            source.display()
        ));
    }
    capture("qemu-io rewrite", &script);
}

/// Pull against push; prints the rows and the ratio.
pub fn rows(work: &Path, backstop: &Path, size_mib: u64) {
    let Some(sshd) = crate::sshd::start_sshd(work) else {
        println!("no sshd: no pull rows");
        return;
    };
    let remotes = work.join("remotes");
    let host_remotes = work.join("host");
    let run_dir = work.join("run");
    for dir in [
        remotes.join("datastore/backstop"),
        remotes.join("tm/qcow2"),
        remotes.join("etc/datastore"),
        host_remotes.join("backstop/bin"),
        run_dir.clone(),
    ] {
        fs::create_dir_all(&dir).expect("dir");
    }
    for link in [
        remotes.join("datastore/backstop/backup"),
        remotes.join("tm/qcow2/prebackup"),
        remotes.join("tm/qcow2/postbackup"),
        host_remotes.join("backstop/bin/backstop"),
    ] {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(backstop, &link).expect("symlink");
    }
    // The same ssh configuration, with AES-GCM preferred to OpenSSH's default chacha20-poly1305
    // (docs/pull-mode.md, "Speed").
    let aes_config = work.join("ssh_config.aes");
    fs::write(
        &aes_config,
        fs::read_to_string(&sshd.config).expect("ssh_config").replace(
            "Host benchhost\n",
            "Host benchhost\n  Ciphers aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com\n",
        ),
    )
    .expect("ssh_config.aes");
    let configure = |ssh_config: &Path| {
        fs::write(
            remotes.join("etc/datastore/backstop.conf"),
            format!(
                "SCRIPTS_REMOTE_DIR={}\nSSH_CONFIG={}\nRUN_DIR={}\nTM_DELIVERY=direct\n",
                host_remotes.display(),
                ssh_config.display(),
                run_dir.display()
            ),
        )
        .expect("backstop.conf");
    };
    configure(&sshd.config);
    let vm_dir = work.join(format!("datastores/0/{VM}"));
    fs::create_dir_all(&vm_dir).expect("vm dir");
    let raw = work.join("disk.raw");
    generate(&raw, size_mib).expect("generate");
    let disk = vm_dir.join("disk.0");
    capture(
        "qemu-img convert",
        &format!("qemu-img convert -f raw -O qcow2 {} {}", q(&raw), q(&disk)),
    );
    fs::remove_file(&raw).expect("rm raw");
    let args = format!("benchhost:{} 0 one-{VM} - {VM} 0", vm_dir.display());
    let step = |action: &str, xml: &str, failed: bool| {
        let stdin = work.join("tm-stdin.xml");
        let body = if failed {
            format!("{xml}<BACKUP_RESULT>FAILURE</BACKUP_RESULT>")
        } else {
            xml.to_string()
        };
        fs::write(&stdin, body).expect("stdin");
        capture(
            action,
            &format!(
                "{} {args} < {}",
                q(&remotes.join("tm/qcow2").join(action)),
                q(&stdin)
            ),
        );
    };
    let backup = |label: &str, ds: &str, xml: &str| {
        let stdin = work.join("backup-stdin.xml");
        fs::write(
            &stdin,
            format!("<DS_DRIVER_ACTION_DATA>{ds}{xml}</DS_DRIVER_ACTION_DATA>"),
        )
        .expect("stdin");
        settle();
        timed(
            label,
            &format!(
                "{} {args} < {}",
                q(&remotes.join("datastore/backstop/backup")),
                q(&stdin)
            ),
        )
    };
    let expected = || {
        let out = work.join("expect.raw");
        capture(
            "qemu-img convert",
            &format!("qemu-img convert -f qcow2 -O raw {} {}", q(&disk), q(&out)),
        );
        let h = sha256_file(&out).expect("hash");
        fs::remove_file(&out).expect("rm");
        h
    };
    let check = |base: &Path, inc: u64| {
        let path = format!("{}/backup/disk.0.{inc}", vm_dir.display());
        let out = capture(
            "restic dump",
            &format!(
                "restic --no-cache -q -r {} dump latest {path} | sha256sum",
                q(&base.join(VM.to_string()))
            ),
        );
        out.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let (push_base, pull_base, aes_base) = (work.join("push"), work.join("pull"), work.join("aes"));
    let (push_ds, pull_ds, aes_ds) = (
        datastore_xml(&push_base, false),
        datastore_xml(&pull_base, true),
        datastore_xml(&aes_base, true),
    );

    let full = vm_xml(-1, size_mib);
    step("prebackup", &full, false);
    let push_full = backup("push full", &push_ds, &full);
    step("postbackup", &full, false);
    step("prebackup", &full, false);
    let pull_full = backup("pull full", &pull_ds, &full);
    step("postbackup", &full, false);
    configure(&aes_config);
    step("prebackup", &full, false);
    let aes_full = backup("pull full, AES-GCM", &aes_ds, &full);
    step("postbackup", &full, false);
    configure(&sshd.config);
    let want = expected();
    for base in [&push_base, &pull_base, &aes_base] {
        assert_eq!(
            check(base, 0),
            want,
            "{}: the FULL differs from the disk",
            base.display()
        );
    }

    rewrite_through_qemu(work, &disk, size_mib * MIB);
    let inc = vm_xml(0, size_mib);
    step("prebackup", &inc, false);
    let push_inc = backup("push increment", &push_ds, &inc);
    // A failure keeps the parent's bitmap: the pull increment reads the same changes.
    step("postbackup", &inc, true);
    step("prebackup", &inc, false);
    let pull_inc = backup("pull increment", &pull_ds, &inc);
    step("postbackup", &inc, true);
    configure(&aes_config);
    step("prebackup", &inc, false);
    let aes_inc = backup("pull increment, AES-GCM", &aes_ds, &inc);
    step("postbackup", &inc, false);
    configure(&sshd.config);
    let want = expected();
    for base in [&push_base, &pull_base, &aes_base] {
        assert_eq!(
            check(base, 1),
            want,
            "{}: the increment differs from the disk",
            base.display()
        );
    }

    for (what, push, pull, aes) in [
        ("full", push_full, pull_full, aes_full),
        ("5 % increment", push_inc, pull_inc, aes_inc),
    ] {
        println!(
            "pull vs push, {what} of a {size_mib} MiB qcow2 disk over loopback ssh: push {:.2} s; pull {:.2} s ({:.0} MiB RSS of the front-end, which writes): {:.2}x push; pull with AES-GCM preferred {:.2} s: {:.2}x push (goal: at most 1.20x)",
            push.seconds,
            pull.seconds,
            pull.rss_mib,
            pull.seconds / push.seconds,
            aes.seconds,
            aes.seconds / push.seconds
        );
    }
}
