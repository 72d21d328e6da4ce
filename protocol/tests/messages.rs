//! Decoding realistic messages for every action (fixtures written after driver contract §2.4 and §3.2),
//! and the exact error for each class of bad input.

use backstop_protocol::input::{self, Encoding};
use backstop_protocol::message::*;
use backstop_protocol::template::Template;
use base64::Engine;

const DATASTORE: &str = include_str!("fixtures/datastore.xml");
const VM: &str = include_str!("fixtures/vm.xml");
const IMAGE_FULL: &str = include_str!("fixtures/image_full.xml");
const IMAGE_CHAIN: &str = include_str!("fixtures/image_chain.xml");

fn action_data(parts: &[&str]) -> String {
    format!(
        "<DS_DRIVER_ACTION_DATA>{}</DS_DRIVER_ACTION_DATA>",
        parts.concat()
    )
}

fn b64(xml: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .encode(xml)
        .into_bytes()
}

fn decode_b64(xml: &str) -> backstop_protocol::xml::Element {
    input::decode(&b64(xml), Encoding::Base64).expect("decodes")
}

fn check_datastore(ds: &Datastore) {
    assert_eq!(ds.id, 100);
    assert_eq!(ds.name, "backups");
    assert_eq!(ds.ds_mad, "backstop");
    assert_eq!(ds.tm_mad, "-");
    assert_eq!(ds.base_path, "/var/lib/one//datastores/100");
    assert_eq!(ds.type_code, Some(3));
    assert_eq!(
        ds.attribute("RESTIC_PASSWORD"),
        Some("correct horse battery staple")
    );
    assert_eq!(ds.attribute("RESTIC_SFTP_SERVER"), Some("10.0.0.8"));
    assert_eq!(ds.attribute("RESTIC_SFTP_USER"), Some("backup"));
    assert_eq!(ds.attribute("RESTIC_CONNECTIONS"), Some("8"));
    assert_eq!(ds.attribute("RESTIC_BWLIMIT"), Some("51200"));
    assert_eq!(ds.attribute("RESTIC_COMPRESSION"), Some("max"));
    assert_eq!(ds.attribute("RESTIC_PRUNE_MAX_UNUSED"), Some("5%"));
    // Unknown attributes are kept, in order, with their text as written.
    assert_eq!(ds.attribute("SITE_NOTE"), Some("rack 4 & \"cold\" aisle"));
    let names: Vec<&str> = ds
        .template
        .attributes
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "DS_MAD",
            "RESTIC_COMPRESSION",
            "RESTIC_CONNECTIONS",
            "RESTIC_PASSWORD",
            "RESTIC_SFTP_SERVER",
            "RESTIC_SFTP_USER",
            "RESTIC_BWLIMIT",
            "RESTIC_PRUNE_MAX_UNUSED",
            "SITE_NOTE",
            "TM_MAD",
            "TYPE"
        ]
    );
    // The password never shows in Debug or serialised output.
    assert!(!format!("{ds:?}").contains("battery"));
    assert!(!serde_json::to_string(ds).expect("json").contains("battery"));
}

fn check_vm(vm: &Vm) {
    assert_eq!(vm.id, 22);
    assert_eq!(vm.name, "db-primary");
    assert_eq!(
        vm.deploy_id.as_deref(),
        Some("8f9b3c1e-2d4a-4e6f-9a0b-1c2d3e4f5a6b")
    );
    assert_eq!((vm.state, vm.lcm_state), (Some(8), Some(70)));
    let p = vm.placement.as_ref().expect("placement");
    assert_eq!(
        p.hostname, "node2.example.org",
        "the current host is the last history record"
    );
    assert_eq!(p.host_id, Some(3));
    assert_eq!(p.system_ds_id, Some(101));
    assert_eq!(p.tm_mad.as_deref(), Some("ssh"));
    assert_eq!(p.vm_mad.as_deref(), Some("kvm"));

    assert_eq!(vm.disks.len(), 3);
    let d0 = vm.disk(0).expect("disk 0");
    assert_eq!(d0.size_mb, Some(10240));
    assert_eq!(d0.format.as_deref(), Some("qcow2"));
    assert_eq!(d0.disk_type.as_deref(), Some("FILE"));
    assert_eq!(
        d0.source.as_deref(),
        Some("/var/lib/one//datastores/1/3f5c2a")
    );
    assert_eq!(d0.image_id, Some(7));
    assert_eq!(d0.target.as_deref(), Some("vda"));
    assert!(!d0.persistent);
    assert!(
        d0.attributes
            .iter()
            .any(|(k, v)| k == "ALLOW_ORPHANS" && v == "FORMAT")
    );
    let d1 = vm.disk(1).expect("disk 1");
    assert!(d1.persistent);
    assert_eq!(d1.size_mb, Some(51200));
    let d2 = vm.disk(2).expect("disk 2");
    assert_eq!(d2.disk_type.as_deref(), Some("fs"));
    assert_eq!(d2.source, None);
    assert_eq!(d2.image_id, None);

    assert_eq!(
        vm.tpm.as_deref(),
        Some(&[("MODEL".to_string(), "tpm-crb".to_string())][..])
    );
    let c = &vm.backup_config;
    assert_eq!(c.mode, BackupMode::Increment);
    assert_eq!(c.increment_mode, Some(IncrementMode::Cbt));
    assert_eq!(c.keep_last, Some(3));
    assert!(c.backup_volatile);
    assert_eq!(c.fs_freeze, FsFreeze::Agent);
    assert_eq!(c.disk_ids.as_deref(), Some(&[0, 1, 2][..]));
    assert!(!c.interactive);
    assert_eq!(c.last_increment_id, Some(4));
    assert_eq!(c.incremental_backup_id, Some(32));
    assert_eq!(c.backup_job_id, Some(5));
    assert!(!c.active_flatten);
    assert_eq!(c.last_datastore_id, Some(100));
    assert_eq!(c.last_bridge.as_deref(), Some("bridge1"));
    assert_eq!(c.last_backup_id.as_deref(), Some("1f2e3d4c"));
    assert_eq!(c.last_backup_size, Some(61440));
    assert_eq!(c.last_backup_format.as_deref(), Some("raw"));
    assert_eq!(vm.backup_ids, vec![31, 32]);
    assert_eq!(
        vm.user_template.get("DESCRIPTION"),
        Some("primary database")
    );
    assert_eq!(vm.template.vectors("CONTEXT").count(), 1);
    assert!(!vm.backup_failed);
}

#[test]
fn monitor() {
    let root = decode_b64(&action_data(&[DATASTORE]));
    let r = MonitorRequest::from_xml(&root).expect("monitor");
    check_datastore(&r.datastore);
}

#[test]
fn backup_with_vm_7x() {
    let root =
        input::decode(action_data(&[DATASTORE, VM]).as_bytes(), Encoding::RawXml).expect("raw xml");
    let r = BackupRequest::from_xml(&root).expect("backup");
    check_datastore(&r.datastore);
    check_vm(r.vm.as_ref().expect("vm"));
}

#[test]
fn backup_with_bare_datastore_6x() {
    let root = input::decode(DATASTORE.as_bytes(), Encoding::RawXml).expect("raw xml");
    let r = BackupRequest::from_xml(&root).expect("backup");
    check_datastore(&r.datastore);
    assert!(r.vm.is_none());
}

/// What a host step is sent: the same request without the named datastore attributes, both
/// in 7.x's action data and in 6.x's bare datastore; nothing else changes.
#[test]
fn a_request_without_front_end_attributes() {
    let secret = "<RESTIC_S3_MAINTENANCE_SECRET_ACCESS_KEY><![CDATA[m&<s3cr3t]]></RESTIC_S3_MAINTENANCE_SECRET_ACCESS_KEY>";
    let names = ["restic_s3_maintenance_secret_access_key"];
    let ds = DATASTORE.replacen("<TEMPLATE>", &format!("<TEMPLATE>{secret}"), 1);
    assert_ne!(ds, DATASTORE);
    for (with, without) in [
        (action_data(&[&ds, VM]), action_data(&[DATASTORE, VM])),
        (ds.clone(), DATASTORE.to_string()),
    ] {
        let root = input::decode(with.as_bytes(), Encoding::RawXml).expect("with");
        let stripped = without_datastore_attributes(&root, &names).expect("something removed");
        let text = stripped.to_xml();
        assert!(
            !text.contains("s3cr3t") && !text.contains("MAINTENANCE"),
            "{text}"
        );
        let again = input::decode(text.as_bytes(), Encoding::RawXml).expect("reads back");
        let want = input::decode(without.as_bytes(), Encoding::RawXml).expect("without");
        assert_eq!(
            BackupRequest::from_xml(&again).expect("request"),
            BackupRequest::from_xml(&want).expect("request")
        );
        assert!(without_datastore_attributes(&want, &names).is_none());
    }
}

#[test]
fn rm_full_image() {
    let root = decode_b64(&action_data(&[IMAGE_FULL, DATASTORE]));
    let r = RmRequest::from_xml(&root).expect("rm");
    check_datastore(&r.datastore);
    let i = &r.image;
    assert_eq!(i.id, 31);
    assert_eq!(i.image_type, Some(6));
    assert_eq!(i.source, "a1b2c3d4");
    assert_eq!(i.path, None);
    assert_eq!(i.format.as_deref(), Some("raw"));
    assert_eq!(i.size_mb, Some(61440));
    assert_eq!(i.datastore_id, Some(100));
    assert_eq!(i.vm_ids, vec![22]);
    assert_eq!(i.vm_id(), Some(22));
    assert_eq!(i.backup_job_id, Some(5));
    assert!(i.increments.is_empty());
    assert_eq!(i.backup_disk_ids, vec![0, 1, 2]);
    let chain = i.chain();
    assert_eq!(chain.len(), 1);
    assert_eq!(
        (chain[0].increment_id, chain[0].source.as_str()),
        (0, "a1b2c3d4")
    );
}

#[test]
fn flatten_increment_chain_with_keep_last() {
    let extra = "<EXTRA_DATA><KEEP_LAST>3</KEEP_LAST></EXTRA_DATA>";
    let root = decode_b64(&action_data(&[IMAGE_CHAIN, DATASTORE, extra]));
    let r = FlattenRequest::from_xml(&root).expect("flatten");
    assert_eq!(r.keep_last, 3);
    let i = &r.image;
    assert_eq!(i.id, 32);
    assert_eq!(i.backup_job_id, None);
    assert_eq!(i.increments.len(), 5);
    let first = &i.increments[0];
    assert_eq!(first.kind, IncrementType::Full);
    assert_eq!(first.parent_id, None);
    assert_eq!(first.size_mb, Some(61440));
    assert_eq!(first.date, Some(1763262008));
    let last = &i.increments[4];
    assert_eq!(
        (last.id, last.parent_id, last.kind),
        (4, Some(3), IncrementType::Increment)
    );
    assert_eq!(last.source, "3a4b5c6d");
    let chain: Vec<String> = i
        .chain_until(Some(2))
        .iter()
        .map(|l| format!("{}:{}", l.increment_id, l.source))
        .collect();
    assert_eq!(chain, ["0:f130ed80", "1:1995054d", "2:5e6f7a8b"]);
    assert_eq!(i.backup_disk_ids, vec![0, 1]);
}

#[test]
fn restore_request() {
    let tmpl = "<TEMPLATE><NO_NIC><![CDATA[YES]]></NO_NIC><NAME><![CDATA[db restored]]></NAME>\
                <INCREMENT_ID><![CDATA[2]]></INCREMENT_ID><USERNAME><![CDATA[alice]]></USERNAME></TEMPLATE>";
    let root = decode_b64(&action_data(&[
        IMAGE_CHAIN,
        DATASTORE,
        "<DESTINATION_DS_ID>1</DESTINATION_DS_ID>",
        tmpl,
    ]));
    let r = RestoreRequest::from_xml(&root).expect("restore");
    assert_eq!(r.destination_ds_id, 1);
    assert_eq!(r.image.id, 32);
    let o = &r.options;
    assert!(o.no_nic);
    assert!(!o.no_ip);
    assert_eq!(o.name.as_deref(), Some("db restored"));
    assert_eq!(o.increment_id, Some(2));
    assert_eq!(o.disk_id, None);
    assert_eq!(o.username, "alice");
}

#[test]
fn stat_request() {
    let image = "<IMAGE><PATH><![CDATA[backstop://100/5/0:f130ed80,1:1995054d/var/lib/one//datastores/101/22/backup/disk.1.1]]></PATH>\
                 <SIZE>51200</SIZE><BACKUP_JOB_ID>5</BACKUP_JOB_ID></IMAGE>";
    let root = decode_b64(&action_data(&[image, DATASTORE]));
    let r = StatRequest::from_xml(&root).expect("stat");
    assert_eq!(r.url.scheme, "backstop");
    assert_eq!(r.url.job_id, Some(5));
    assert_eq!(r.url.last_source(), "1995054d");
    assert_eq!(r.url.disk_id(), Some(1));
    assert_eq!(r.url.vm_id(), Some(22));
    assert_eq!(r.size_mb, Some(51200));
    assert_eq!(r.backup_job_id, Some(5));
}

#[test]
fn ls_request() {
    let root = input::decode(
        action_data(&[DATASTORE, VM, IMAGE_CHAIN]).as_bytes(),
        Encoding::RawXml,
    )
    .expect("raw xml");
    let r = LsRequest::from_xml(&root).expect("ls");
    check_vm(r.vm.as_ref().expect("vm"));
    assert_eq!(r.image.chain().len(), 5);
}

#[test]
fn backup_cancel_and_postbackup_vm() {
    let roots = input::decode_siblings(VM.as_bytes(), Encoding::RawXml).expect("vm");
    let vm = vm_from_siblings(&roots).expect("vm");
    check_vm(&vm);
    // one_vmm_exec appends BACKUP_RESULT for postbackup after a failure: inside or after </VM>.
    let inside = VM.replace("</VM>", "<BACKUP_RESULT>FAILURE</BACKUP_RESULT></VM>");
    let after = format!("{VM}<BACKUP_RESULT>FAILURE</BACKUP_RESULT>");
    for text in [inside, after] {
        let roots = input::decode_siblings(text.as_bytes(), Encoding::RawXml).expect("vm");
        assert!(vm_from_siblings(&roots).expect("vm").backup_failed);
    }
}

/// The exact error for each class of bad input.
#[test]
fn bad_input_errors() {
    let no_base_path = DATASTORE.replace(
        "<BASE_PATH><![CDATA[/var/lib/one//datastores/100]]></BASE_PATH>",
        "",
    );
    let bad_id = DATASTORE.replace("<ID>100</ID>", "<ID>one hundred</ID>");
    let cases: Vec<(String, String)> = vec![
        (
            action_data(&["<IMAGE/>"]),
            "DS_DRIVER_ACTION_DATA/DATASTORE is missing".into(),
        ),
        (
            action_data(&[&no_base_path]),
            "DS_DRIVER_ACTION_DATA/DATASTORE/BASE_PATH is missing".into(),
        ),
        (
            action_data(&[&bad_id]),
            "DS_DRIVER_ACTION_DATA/DATASTORE/ID is not a number: \"one hundred\"".into(),
        ),
        (
            "<VM><ID>1</ID></VM>".into(),
            "expected XML root element DS_DRIVER_ACTION_DATA, found VM".into(),
        ),
    ];
    for (xml, expected) in cases {
        let root = decode_b64(&xml);
        let err = MonitorRequest::from_xml(&root).expect_err(&expected);
        assert_eq!(err.to_string(), expected);
    }
    let stat = action_data(&[
        "<IMAGE><PATH>restic://100///var/lib/one/datastores/0/22/backup/disk.0.0</PATH></IMAGE>",
        DATASTORE,
    ]);
    assert_eq!(
        StatRequest::from_xml(&decode_b64(&stat))
            .expect_err("no chain")
            .to_string(),
        "DS_DRIVER_ACTION_DATA/IMAGE/PATH has no increment chain (expected <proto>://<datastore id>/<job id or empty>/<id:source,...>/<absolute path>)"
    );
    let bad_inc = IMAGE_CHAIN.replace("<ID>3</ID>", "<ID>three</ID>");
    let flat = action_data(&[
        &bad_inc,
        DATASTORE,
        "<EXTRA_DATA><KEEP_LAST>3</KEEP_LAST></EXTRA_DATA>",
    ]);
    assert_eq!(
        FlattenRequest::from_xml(&decode_b64(&flat))
            .expect_err("bad inc")
            .to_string(),
        "DS_DRIVER_ACTION_DATA/IMAGE/BACKUP_INCREMENTS/INCREMENT[3]/ID is not a number: \"three\""
    );
    let no_keep = action_data(&[IMAGE_CHAIN, DATASTORE]);
    assert_eq!(
        FlattenRequest::from_xml(&decode_b64(&no_keep))
            .expect_err("no keep")
            .to_string(),
        "DS_DRIVER_ACTION_DATA/EXTRA_DATA/KEEP_LAST is missing"
    );
    assert_eq!(
        Template::parse("NAME = b\nDISK = [ IMAGE = a,\n")
            .expect_err("vector")
            .to_string(),
        "line 2, column 8: vector DISK is not closed (missing ']')"
    );
}

#[test]
fn disks_with_disk_snapshots_are_listed() {
    let doc = "<VM><ID>7</ID><TEMPLATE/>\
        <SNAPSHOTS><ALLOW_ORPHANS>NO</ALLOW_ORPHANS><CURRENT_BASE>-1</CURRENT_BASE><DISK_ID>1</DISK_ID>\
        <NEXT_SNAPSHOT>1</NEXT_SNAPSHOT><SNAPSHOT><ID>0</ID><NAME>s</NAME></SNAPSHOT></SNAPSHOTS>\
        <SNAPSHOTS><DISK_ID>2</DISK_ID></SNAPSHOTS></VM>";
    let root = backstop_protocol::xml::Element::parse(doc).expect("xml");
    assert_eq!(Vm::from_xml(&root).expect("vm").disk_snapshots, [1]);
    let bad = doc.replace("<DISK_ID>1</DISK_ID>", "<DISK_ID>x</DISK_ID>");
    let root = backstop_protocol::xml::Element::parse(&bad).expect("xml");
    let e = Vm::from_xml(&root).expect_err("not a number");
    assert!(e.to_string().contains("SNAPSHOTS"), "{e}");
}
