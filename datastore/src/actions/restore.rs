//! `restore` (driver contract §5.9, §9.1): `oneimage restore` of a backup image into new images and a VM
//! template, allocated through oned's API as the requesting user.
//!
//! 1. The selected snapshot is the last of the chain up to `INCREMENT_ID` (or of the whole
//!    chain). Its `vm.xml` and its disk files say what to restore. (The stock driver reads
//!    increment 0's snapshot when INCREMENT_ID is absent, quirk Q3; every backstop snapshot is
//!    complete, so the latest VM template is the better source.)
//! 2. A server-cipher login for `TEMPLATE/USERNAME` (driver contract §9.3), valid for 120 s.
//! 3. One `one.image.allocate` per disk (only `DISK_ID` if given) into DESTINATION_DS_ID, with
//!    `PATH` the backup URL of that disk; oned then runs `stat` here and the destination's `cp`,
//!    whose downloader streams the disk.
//! 4. Unless DISK_ID was given, one `one.template.allocate` with the saved VM cleaned as
//!    `BackupRestore#vm_template` cleans it (driver contract §9.1), and `TPM_STATE` when the backup has a
//!    TPM.
//!
//! stdout: `<template id or -1> <image id> ...`. A failure after some images were created says
//! which, so the operator can remove them.

use crate::backup_image::{Selected, absolute, select};
use crate::config::DriverConfig;
use crate::oned::{OnedClient, server_cipher_session};
use crate::settings::lock_wait;
use crate::{Error, ErrorKind};
use backstop_protocol::message::{RestoreOptions, RestoreRequest, template_from_xml};
use backstop_protocol::template::{Attribute, Template, Value as TValue};
use backstop_protocol::xml::Element;
use backstop_protocol::xmlrpc::Value;
use std::collections::BTreeMap;

/// DISK keys that belong to the original placement, not to a new VM.
const DISK_DROP: &[&str] = &[
    "ALLOW_ORPHANS",
    "CLONE",
    "CLONE_TARGET",
    "CLUSTER_ID",
    "DATASTORE",
    "DATASTORE_ID",
    "DISK_SNAPSHOT_TOTAL_SIZE",
    "DISK_TYPE",
    "DRIVER",
    "IMAGE",
    "IMAGE_STATE",
    "IMAGE_UID",
    "IMAGE_UNAME",
    "LN_TARGET",
    "OPENNEBULA_MANAGED",
    "ORIGINAL_SIZE",
    "PERSISTENT",
    "READONLY",
    "SAVE",
    "SOURCE",
    "TARGET",
    "TM_MAD",
    "FORMAT",
];
const NIC_DROP: &[&str] = &[
    "AR_ID",
    "BRIDGE",
    "BRIDGE_TYPE",
    "CLUSTER_ID",
    "NAME",
    "NETWORK_ID",
    "NIC_ID",
    "TARGET",
    "VLAN_ID",
    "VN_MAD",
    "VLAN_TAGGED_ID",
    "PHYDEV",
];
const NIC_ADDRESSES: &[&str] = &["IP", "IP6", "IP6_ULA", "IP6_GLOBAL", "MAC"];
const PCI_DROP: &[&str] = &[
    "ADDRESS",
    "BUS",
    "DOMAIN",
    "FUNCTION",
    "NUMA_NODE",
    "PCI_ID",
    "SLOT",
    "VM_ADDRESS",
    "VM_BUS",
    "VM_DOMAIN",
    "VM_FUNCTION",
    "VM_SLOT",
    "SHORT_ADDRESS",
];
const TOP_DROP: &[&str] = &[
    "AUTOMATIC_DS_REQUIREMENTS",
    "AUTOMATIC_NIC_REQUIREMENTS",
    "AUTOMATIC_REQUIREMENTS",
    "VMID",
    "TEMPLATE_ID",
    "TM_MAD_SYSTEM",
    "SECURITY_GROUP_RULE",
    "ERROR",
];

/// The template of one restored disk image.
pub fn image_template(
    name: &str,
    disk_id: u32,
    path_url: &str,
    ds_id: u64,
    job: Option<u64>,
) -> Result<String, Error> {
    let mut t = Template::default();
    t.push("NAME", name);
    t.push("TYPE", if disk_id == 0 { "OS" } else { "DATABLOCK" });
    t.push("PATH", path_url);
    t.push("FROM_BACKUP_DS", ds_id.to_string());
    if let Some(j) = job {
        t.push("BACKUP_JOB_ID", j.to_string());
    }
    written(&t, "image")
}

/// The text oned reads back exactly as `t` is (see [`Template::render`]); a value that has no
/// such form is refused, never written so that it could change meaning.
fn written(t: &Template, what: &str) -> Result<String, Error> {
    t.render().map_err(|e| {
        Error::new(
            ErrorKind::Input,
            format!("the restored {what} template cannot be written: {e}"),
        )
    })
}

fn drop_in(t: &mut Template, vector: &str, drop: impl Fn(&str) -> bool) {
    for a in t.attributes.iter_mut().filter(|a| a.name == vector) {
        if let TValue::Vector(pairs) = &mut a.value {
            pairs.retain(|(k, _)| !drop(k));
        }
    }
}

fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn set(pairs: &mut Vec<(String, String)>, key: &str, value: String) {
    match pairs.iter_mut().find(|(k, _)| k == key) {
        Some(p) => p.1 = value,
        None => pairs.push((key.to_string(), value)),
    }
}

/// `TEMPLATE` with `USER_TEMPLATE` merged in: a user attribute replaces every template
/// attribute of its name, at the place of the first.
fn merged(vm: &Element) -> Template {
    let mut t = vm
        .child("TEMPLATE")
        .map(template_from_xml)
        .unwrap_or_default();
    let user = vm
        .child("USER_TEMPLATE")
        .map(template_from_xml)
        .unwrap_or_default();
    let mut names: Vec<&str> = Vec::new();
    for a in &user.attributes {
        if !names.contains(&a.name.as_str()) {
            names.push(&a.name);
        }
    }
    for name in names {
        let values: Vec<Attribute> = user
            .attributes
            .iter()
            .filter(|a| a.name == name)
            .cloned()
            .collect();
        match t.attributes.iter().position(|a| a.name == name) {
            Some(at) => {
                t.attributes.retain(|a| a.name != name);
                let at = at.min(t.attributes.len());
                t.attributes.splice(at..at, values);
            }
            None => t.attributes.extend(values),
        }
    }
    t
}

/// The VM template of the restored VM, from the saved VM document.
pub fn vm_template(
    vm: &Element,
    options: &RestoreOptions,
    base_name: &str,
    restored: &BTreeMap<u32, i64>,
    tpm_state: Option<&str>,
) -> Result<String, Error> {
    let mut t = merged(vm);
    drop_in(&mut t, "DISK", |k| DISK_DROP.contains(&k));
    t.attributes
        .retain(|a| !TOP_DROP.contains(&a.name.as_str()));
    // The stock code's patterns are unanchored: any CONTEXT key containing ETH or PCI goes.
    drop_in(&mut t, "CONTEXT", |k| {
        k == "DISK_ID" || k.contains("ETH") || k.contains("PCI")
    });
    drop_in(&mut t, "GRAPHICS", |k| k == "PORT");
    drop_in(&mut t, "NUMA_NODE", |k| {
        matches!(k, "CPUS" | "MEMORY_NODE_ID" | "NODE_ID")
    });
    drop_in(&mut t, "OS", |k| k == "UUID");
    drop_in(&mut t, "PCI", |k| {
        NIC_DROP.contains(&k) || PCI_DROP.contains(&k)
    });

    for a in t.attributes.iter_mut().filter(|a| a.name == "DISK") {
        let TValue::Vector(d) = &mut a.value else {
            continue;
        };
        let Some(id) = get(d, "DISK_ID").map(str::to_string) else {
            continue;
        };
        let kind = get(d, "TYPE").unwrap_or_default().to_ascii_uppercase();
        d.retain(|(k, _)| k != "DISK_ID");
        let image = id.parse::<u32>().ok().and_then(|i| restored.get(&i));
        if kind == "FS" {
            // A volatile disk: restored if it was backed up, otherwise created empty again.
            d.retain(|(k, _)| k != "IMAGE_ID");
            if image.is_none() {
                continue;
            }
        }
        d.retain(|(k, _)| k != "TYPE" && k != "SIZE");
        if matches!(kind.as_str(), "CDROM" | "RBD_CDROM") {
            continue; // keeps its original image
        }
        if let Some(image) = image {
            set(d, "IMAGE_ID", image.to_string());
        }
    }

    if options.no_nic {
        t.attributes
            .retain(|a| a.name != "NIC" && a.name != "NIC_ALIAS");
    } else {
        let no_ip = options.no_ip;
        drop_in(&mut t, "NIC", |k| {
            NIC_DROP.contains(&k) || (no_ip && NIC_ADDRESSES.contains(&k))
        });
        // A NIC keeps one way to be addressed: IP, else IP6, else MAC.
        for a in t.attributes.iter_mut().filter(|a| a.name == "NIC") {
            if let TValue::Vector(n) = &mut a.value {
                if get(n, "IP").is_some() {
                    n.retain(|(k, _)| {
                        !matches!(k.as_str(), "MAC" | "IP6" | "IP6_ULA" | "IP6_GLOBAL")
                    });
                } else if get(n, "IP6").is_some() {
                    n.retain(|(k, _)| k != "MAC");
                }
            }
        }
    }

    // Empty values and vectors go.
    for a in &mut t.attributes {
        if let TValue::Vector(pairs) = &mut a.value {
            pairs.retain(|(_, v)| !v.is_empty());
        }
    }
    t.attributes.retain(|a| match &a.value {
        TValue::Single(v) => !v.is_empty(),
        TValue::Vector(p) => !p.is_empty(),
    });
    t.attributes.retain(|a| a.name != "NAME");
    t.push("NAME", base_name);
    if let Some(tpm) = tpm_state {
        t.attributes.retain(|a| a.name != "TPM_STATE");
        t.push("TPM_STATE", tpm);
    }
    written(&t, "VM")
}

pub fn run(request: &RestoreRequest, cfg: &DriverConfig) -> Result<String, Error> {
    let image = &request.image;
    let ds = &request.datastore;
    let options = &request.options;
    let Selected {
        repo,
        source,
        vm,
        disks,
        tpm_path,
        base_url,
        ..
    } = select(image, ds, options.increment_id, options.disk_id, cfg)?;
    let wait = lock_wait(ds);
    let tpm_state = match (options.disk_id, tpm_path) {
        (None, Some(p)) => {
            let mut tpm = Vec::new();
            repo.dump(&source, &p, &mut tpm, wait)?;
            use base64::Engine;
            Some(base64::engine::general_purpose::STANDARD.encode(tpm))
        }
        _ => None,
    };
    let vm_id = vm
        .text_at("ID")
        .map(str::to_string)
        .or_else(|| image.vm_id().map(|v| v.to_string()))
        .unwrap_or_default();
    let base_name = options
        .name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| format!("{vm_id}-{source}"));
    let job = image.backup_job_id;

    // As the requesting user.
    let client = OnedClient::from_env_endpoint()?;
    let expire = jiff::Timestamp::now().as_second() + 120;
    let session = server_cipher_session(&options.username, expire)?;
    let id_of = |v: Value, method: &str| match v {
        Value::Int(i) => Ok(i),
        other => Err(Error::new(
            ErrorKind::Oned,
            format!("{method} returned {other:?}, not an id"),
        )),
    };
    let mut restored: BTreeMap<u32, i64> = BTreeMap::new();
    let mut created: Vec<i64> = Vec::new();
    let with_created = |e: Error, created: &[i64]| {
        if created.is_empty() {
            e
        } else {
            let ids: Vec<String> = created.iter().map(i64::to_string).collect();
            Error::new(
                e.kind,
                format!("{e}; these images were already restored: {}", ids.join(" ")),
            )
        }
    };
    // Every template is written (and a value with no exact form refused) before anything is
    // allocated; image ids do not change what can be written.
    let placeholders: BTreeMap<u32, i64> = disks.keys().map(|d| (*d, 0)).collect();
    vm_template(
        &vm,
        options,
        &base_name,
        &placeholders,
        tpm_state.as_deref(),
    )?;
    let mut image_templates = Vec::new();
    for (disk_id, path) in &disks {
        let path = absolute(path);
        image_templates.push((
            *disk_id,
            image_template(
                &format!("{base_name}-disk-{disk_id}"),
                *disk_id,
                &format!("{base_url}{path}"),
                ds.id,
                job,
            )?,
        ));
    }
    for (disk_id, template) in image_templates {
        let id = client
            .call_as(
                &session,
                "one.image.allocate",
                &[
                    Value::Str(template),
                    Value::Int(request.destination_ds_id as i64),
                    Value::Bool(false),
                ],
            )
            .map_err(Error::from)
            .and_then(|v| id_of(v, "one.image.allocate"))
            .map_err(|e| with_created(e, &created))?;
        restored.insert(disk_id, id);
        created.push(id);
    }
    let template_id = if options.disk_id.is_none() {
        let template = vm_template(&vm, options, &base_name, &restored, tpm_state.as_deref())?;
        client
            .call_as(&session, "one.template.allocate", &[Value::Str(template)])
            .map_err(Error::from)
            .and_then(|v| id_of(v, "one.template.allocate"))
            .map_err(|e| with_created(e, &created))?
    } else {
        -1
    };
    let ids: Vec<String> = created.iter().map(i64::to_string).collect();
    Ok(format!("{template_id} {}", ids.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = r#"<VM><ID>22</ID><NAME>db</NAME><TEMPLATE>
        <AUTOMATIC_REQUIREMENTS><![CDATA[!(PUBLIC_CLOUD = YES)]]></AUTOMATIC_REQUIREMENTS>
        <CONTEXT><DISK_ID><![CDATA[3]]></DISK_ID><ETH0_IP><![CDATA[10.0.0.5]]></ETH0_IP>
          <NETWORK><![CDATA[YES]]></NETWORK><SSH_PUBLIC_KEY><![CDATA[ssh-ed25519 AAAA "x"]]></SSH_PUBLIC_KEY>
          <PCI0_ADDRESS><![CDATA[01:00.0]]></PCI0_ADDRESS><TARGET><![CDATA[hda]]></TARGET></CONTEXT>
        <CPU><![CDATA[1]]></CPU>
        <DISK><CLONE><![CDATA[YES]]></CLONE><DATASTORE><![CDATA[default]]></DATASTORE>
          <DISK_ID><![CDATA[0]]></DISK_ID><DRIVER><![CDATA[qcow2]]></DRIVER><IMAGE><![CDATA[ubuntu]]></IMAGE>
          <IMAGE_ID><![CDATA[7]]></IMAGE_ID><SIZE><![CDATA[2048]]></SIZE><SOURCE><![CDATA[/x/abc]]></SOURCE>
          <TARGET><![CDATA[vda]]></TARGET><TYPE><![CDATA[FILE]]></TYPE><DEV_PREFIX><![CDATA[vd]]></DEV_PREFIX></DISK>
        <DISK><DISK_ID><![CDATA[1]]></DISK_ID><IMAGE_ID><![CDATA[8]]></IMAGE_ID><TYPE><![CDATA[CDROM]]></TYPE>
          <SIZE><![CDATA[300]]></SIZE><TARGET><![CDATA[hdc]]></TARGET></DISK>
        <DISK><DISK_ID><![CDATA[2]]></DISK_ID><TYPE><![CDATA[fs]]></TYPE><SIZE><![CDATA[1024]]></SIZE>
          <FORMAT><![CDATA[raw]]></FORMAT></DISK>
        <GRAPHICS><LISTEN><![CDATA[0.0.0.0]]></LISTEN><PORT><![CDATA[5922]]></PORT><TYPE><![CDATA[VNC]]></TYPE></GRAPHICS>
        <MEMORY><![CDATA[1024]]></MEMORY>
        <NIC><AR_ID><![CDATA[0]]></AR_ID><BRIDGE><![CDATA[br0]]></BRIDGE><IP><![CDATA[10.0.0.5]]></IP>
          <MAC><![CDATA[02:00:0a:00:00:05]]></MAC><NETWORK><![CDATA[pub]]></NETWORK><NETWORK_ID><![CDATA[0]]></NETWORK_ID>
          <NIC_ID><![CDATA[0]]></NIC_ID><MODEL><![CDATA[virtio]]></MODEL></NIC>
        <NIC><IP6><![CDATA[fd00::5]]></IP6><MAC><![CDATA[02:00:0a:00:00:06]]></MAC><NETWORK><![CDATA[v6]]></NETWORK></NIC>
        <NUMA_NODE><CPUS><![CDATA[0]]></CPUS><MEMORY><![CDATA[1024]]></MEMORY><NODE_ID><![CDATA[0]]></NODE_ID><TOTAL_CPUS><![CDATA[1]]></TOTAL_CPUS></NUMA_NODE>
        <OS><ARCH><![CDATA[x86_64]]></ARCH><UUID><![CDATA[4f1e]]></UUID></OS>
        <SECURITY_GROUP_RULE><PROTOCOL><![CDATA[ALL]]></PROTOCOL></SECURITY_GROUP_RULE>
        <TEMPLATE_ID><![CDATA[3]]></TEMPLATE_ID><TM_MAD_SYSTEM><![CDATA[ssh]]></TM_MAD_SYSTEM>
        <VMID><![CDATA[22]]></VMID></TEMPLATE>
        <USER_TEMPLATE><DESCRIPTION><![CDATA[the database]]></DESCRIPTION><ERROR><![CDATA[old]]></ERROR>
          <MEMORY><![CDATA[2048]]></MEMORY><LABELS><![CDATA[]]></LABELS></USER_TEMPLATE></VM>"#;

    fn options() -> RestoreOptions {
        RestoreOptions {
            username: "alice".into(),
            ..RestoreOptions::default()
        }
    }

    fn render(options: &RestoreOptions) -> Template {
        let vm = Element::parse(VM).expect("vm xml");
        let restored = BTreeMap::from([(0u32, 41i64), (2, 42)]);
        let text =
            vm_template(&vm, options, "22-a1b2c3d4", &restored, Some("dHBt")).expect("writes");
        // What we write, oned's template syntax reads back.
        Template::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn vector<'a>(t: &'a Template, name: &'a str, n: usize) -> Vec<(String, String)> {
        t.vectors(name)
            .nth(n)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }

    fn keys(pairs: &[(String, String)]) -> Vec<&str> {
        pairs.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn the_saved_vm_becomes_a_clean_template() {
        let t = render(&options());
        let names: Vec<&str> = t.attributes.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "CONTEXT",
                "CPU",
                "DISK",
                "DISK",
                "DISK",
                "GRAPHICS",
                "MEMORY",
                "NIC",
                "NIC",
                "NUMA_NODE",
                "OS",
                "DESCRIPTION",
                "NAME",
                "TPM_STATE"
            ]
        );
        assert_eq!(t.get("MEMORY"), Some("2048"), "USER_TEMPLATE wins");
        assert_eq!(t.get("NAME"), Some("22-a1b2c3d4"));
        assert_eq!(t.get("TPM_STATE"), Some("dHBt"));
        assert_eq!(
            keys(&vector(&t, "CONTEXT", 0)),
            ["NETWORK", "SSH_PUBLIC_KEY", "TARGET"]
        );
        assert_eq!(
            get(&vector(&t, "CONTEXT", 0), "SSH_PUBLIC_KEY"),
            Some("ssh-ed25519 AAAA \"x\"")
        );
        // The restored OS disk points at its new image; the CDROM keeps its own.
        let d0 = vector(&t, "DISK", 0);
        assert_eq!(keys(&d0), ["IMAGE_ID", "DEV_PREFIX"]);
        assert_eq!(get(&d0, "IMAGE_ID"), Some("41"));
        assert_eq!(
            vector(&t, "DISK", 1),
            [("IMAGE_ID".to_string(), "8".to_string())]
        );
        // A backed-up volatile disk becomes an image.
        assert_eq!(
            vector(&t, "DISK", 2),
            [("IMAGE_ID".to_string(), "42".to_string())]
        );
        assert_eq!(keys(&vector(&t, "GRAPHICS", 0)), ["LISTEN", "TYPE"]);
        let nic0 = vector(&t, "NIC", 0);
        assert_eq!(keys(&nic0), ["IP", "NETWORK", "MODEL"]);
        assert_eq!(keys(&vector(&t, "NIC", 1)), ["IP6", "NETWORK"]);
        assert_eq!(keys(&vector(&t, "NUMA_NODE", 0)), ["MEMORY", "TOTAL_CPUS"]);
        assert_eq!(keys(&vector(&t, "OS", 0)), ["ARCH"]);
    }

    #[test]
    fn no_ip_and_no_nic() {
        let t = render(&RestoreOptions {
            no_ip: true,
            ..options()
        });
        assert_eq!(keys(&vector(&t, "NIC", 0)), ["NETWORK", "MODEL"]);
        assert_eq!(keys(&vector(&t, "NIC", 1)), ["NETWORK"]);
        let t = render(&RestoreOptions {
            no_nic: true,
            ..options()
        });
        assert_eq!(t.vectors("NIC").count(), 0);
    }

    #[test]
    fn a_volatile_disk_not_in_the_backup_is_created_empty_again() {
        let vm = Element::parse(VM).expect("vm xml");
        let text =
            vm_template(&vm, &options(), "x", &BTreeMap::from([(0, 41)]), None).expect("writes");
        let t = Template::parse(&text).expect("parse");
        assert_eq!(
            vector(&t, "DISK", 2),
            [
                ("TYPE".to_string(), "fs".to_string()),
                ("SIZE".to_string(), "1024".to_string())
            ]
        );
        assert_eq!(t.get("TPM_STATE"), None);
    }

    /// A tenant's USER_TEMPLATE with a value ending in a backslash: written naively as
    /// `"x\"`, oned's lexer reads on into the next value and the tenant's text becomes
    /// top-level attributes of the template allocated as the restoring user.
    #[test]
    fn a_hostile_user_template_smuggles_nothing() {
        let payload = "\nEMULATOR = \"/tmp/evil\"\nCONTEXT = [ FILES = \"/etc/shadow\" ]\nZ = ";
        let vm = Element::parse(&format!(
            "<VM><ID>22</ID><TEMPLATE><CPU>1</CPU></TEMPLATE><USER_TEMPLATE>\
             <A><![CDATA[x\\]]></A><B><![CDATA[{payload}]]></B></USER_TEMPLATE></VM>"
        ))
        .expect("vm xml");
        let text = vm_template(&vm, &options(), "n", &BTreeMap::new(), None).expect("writes");
        let t = Template::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(t.get("A"), Some("x\\"), "{text}");
        assert_eq!(t.get("B"), Some(payload), "{text}");
        assert_eq!(t.get("EMULATOR"), None, "{text}");
        assert_eq!(t.vectors("CONTEXT").count(), 0, "{text}");

        // A value with no exact form is refused, naming it; nothing is allocated.
        let vm = Element::parse(
            "<VM><ID>22</ID><TEMPLATE/><USER_TEMPLATE><A><![CDATA[x y\\]]></A></USER_TEMPLATE></VM>",
        )
        .expect("vm xml");
        let e = vm_template(&vm, &options(), "n", &BTreeMap::new(), None).expect_err("refused");
        assert!(
            e.to_string()
                .starts_with("the restored VM template cannot be written: attribute A:"),
            "{e}"
        );
    }

    #[test]
    fn image_templates() {
        let text = image_template(
            "22-a1b2c3d4-disk-1",
            1,
            "backstop://100/7/0:a1b2c3d4/var/lib/one//datastores/0/22/backup/disk.1.0",
            100,
            Some(7),
        )
        .expect("writes");
        let t = Template::parse(&text).expect("parse");
        assert_eq!(t.get("NAME"), Some("22-a1b2c3d4-disk-1"));
        assert_eq!(t.get("TYPE"), Some("DATABLOCK"));
        assert_eq!(t.get("FROM_BACKUP_DS"), Some("100"));
        assert_eq!(t.get("BACKUP_JOB_ID"), Some("7"));
        assert!(t.get("PATH").is_some_and(|p| p.ends_with("/disk.1.0")));
        let t = Template::parse(&image_template("n", 0, "u", 100, None).expect("writes"))
            .expect("parse");
        assert_eq!(t.get("TYPE"), Some("OS"));
        assert_eq!(t.get("BACKUP_JOB_ID"), None);
    }

    #[test]
    fn disks_of_a_snapshot() {
        let paths: Vec<String> = [
            "/v/22/backup/disk.0.3",
            "/v/22/backup/disk.2.3",
            "/v/22/backup/disk.tpm.0",
            "/v/22/backup/vm.xml",
            "/v/22/backup/disk.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            crate::layout::snapshot_disks(&paths)
                .into_iter()
                .collect::<Vec<_>>(),
            [
                (0, "/v/22/backup/disk.0.3".to_string()),
                (2, "/v/22/backup/disk.2.3".to_string())
            ]
        );
    }
}
