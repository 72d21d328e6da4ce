//! Property tests: arbitrary input never panics; valid values round-trip.

use backstop_protocol::input::{self, Encoding};
use backstop_protocol::message::*;
use backstop_protocol::template::{Attribute, Template, Value};
use backstop_protocol::url::{BackupUrl, ChainLink};
use backstop_protocol::xml::Element;
use proptest::prelude::*;

fn all_parsers(root: &Element) {
    let _ = MonitorRequest::from_xml(root);
    let _ = RmRequest::from_xml(root);
    let _ = FlattenRequest::from_xml(root);
    let _ = StatRequest::from_xml(root);
    let _ = RestoreRequest::from_xml(root);
    let _ = BackupRequest::from_xml(root);
    let _ = LsRequest::from_xml(root);
    let _ = vm_from_siblings(std::slice::from_ref(root));
}

/// XML-ish text built from the names the parsers look for, so the generator reaches deep paths.
fn xmlish() -> impl Strategy<Value = String> {
    let names = prop::sample::select(vec![
        "DS_DRIVER_ACTION_DATA",
        "DATASTORE",
        "IMAGE",
        "VM",
        "ID",
        "BASE_PATH",
        "DS_MAD",
        "TEMPLATE",
        "DISK",
        "DISK_ID",
        "SIZE",
        "BACKUP_INCREMENTS",
        "INCREMENT",
        "SOURCE",
        "PATH",
        "HISTORY_RECORDS",
        "HISTORY",
        "HOSTNAME",
        "BACKUPS",
        "BACKUP_CONFIG",
        "KEEP_LAST",
        "EXTRA_DATA",
        "USERNAME",
        "DESTINATION_DS_ID",
        "VMS",
        "BACKUP_DISK_IDS",
    ]);
    let leaf = prop_oneof![
        "[ -~]{0,12}".prop_map(|t| t.replace(['<', '&'], "")),
        Just("-1".to_string()),
        Just("100".to_string()),
        Just("restic://1/2/0:a,1:b/x/9/backup/disk.0.1".to_string()),
        Just("<![CDATA[x]]>".to_string()),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        (names.clone(), prop::collection::vec(inner, 0..6))
            .prop_map(|(n, kids)| format!("<{n}>{}</{n}>", kids.concat()))
    })
}

fn source() -> impl Strategy<Value = String> {
    "[a-f0-9]{1,16}"
}

fn url() -> impl Strategy<Value = BackupUrl> {
    (
        prop::sample::select(vec!["restic", "rsync", "backstop"]),
        any::<bool>(),
        any::<u64>(),
        prop::option::of(any::<u64>()),
        prop::collection::vec((any::<u64>(), source()), 1..6),
        prop::collection::vec("[A-Za-z0-9._-]{1,10}", 1..6),
    )
        .prop_map(|(scheme, rbd, ds, job, chain, parts)| BackupUrl {
            scheme: scheme.into(),
            rbd,
            datastore_id: ds,
            job_id: job,
            chain: chain
                .into_iter()
                .map(|(increment_id, source)| ChainLink {
                    increment_id,
                    source,
                })
                .collect(),
            path: format!("/{}", parts.join("/")),
        })
}

/// Values oned can read back: anything but a backslash (oned has no escape for it).
fn value() -> impl Strategy<Value = String> + Clone {
    "[\\PC\\n\\t]{0,20}"
}

/// Values built from what templates find hard: backslashes, quotes, newlines and separators.
fn hostile_value() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        "[a-z\\\\\"\n\r\t =#,\\[\\]>\\x00\\x01]{0,16}",
        "\\PC{0,12}",
        Just("x\\".to_string()),
        Just("x\\\nEMULATOR = \"/tmp/evil\"".to_string()),
        Just("a\\\"b".to_string()),
        Just("]]>".to_string()),
    ]
}

fn template_of(value: impl Strategy<Value = String> + Clone) -> impl Strategy<Value = Template> {
    let name = "[A-Z0-9_]{1,12}";
    let attr = prop_oneof![
        (name, value.clone()).prop_map(|(n, v)| Attribute {
            name: n,
            value: Value::Single(v)
        }),
        (name, prop::collection::vec((name, value), 0..4)).prop_map(|(n, pairs)| Attribute {
            name: n,
            value: Value::Vector(pairs)
        }),
    ];
    prop::collection::vec(attr, 0..8).prop_map(|attributes| Template { attributes })
}

fn template() -> impl Strategy<Value = Template> {
    template_of(value())
}

/// Whether a value has a text form oned reads back unchanged (the oracle for `render`).
fn representable(v: &str) -> bool {
    let controls = v
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'));
    let bare_token = !v.starts_with('"')
        && !v.contains("\\\"")
        && !v
            .chars()
            .any(|c| matches!(c, ' ' | '\t' | '\r' | '\n' | '=' | '#' | ',' | '[' | ']'));
    !controls && !v.contains("]]>") && (!v.ends_with('\\') || bare_token)
}

fn values(t: &Template) -> Vec<&str> {
    t.attributes
        .iter()
        .flat_map(|a| match &a.value {
            Value::Single(v) => vec![v.as_str()],
            Value::Vector(p) => p.iter().map(|(_, v)| v.as_str()).collect(),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decoder_never_panics_on_bytes(raw in prop::collection::vec(any::<u8>(), 0..512)) {
        for enc in [Encoding::Base64, Encoding::RawXml] {
            if let Ok(root) = input::decode(&raw, enc) {
                all_parsers(&root);
            }
            let _ = input::decode_siblings(&raw, enc);
        }
    }

    #[test]
    fn message_parsers_never_panic_on_xmlish(doc in xmlish()) {
        if let Ok(root) = Element::parse(&doc) {
            all_parsers(&root);
        }
    }

    #[test]
    fn template_parser_never_panics(text in "\\PC{0,200}") {
        let _ = Template::parse(&text);
    }

    #[test]
    fn template_parser_never_panics_on_template_like_text(
        text in "[A-Z_=\\[\\]\",# \n\\\\a-z0-9]{0,120}"
    ) {
        let _ = Template::parse(&text);
    }

    #[test]
    fn url_parser_never_panics(text in "\\PC{0,120}") {
        let _ = BackupUrl::parse(&text);
    }

    #[test]
    fn url_round_trips(u in url()) {
        let text = u.to_string();
        prop_assert_eq!(BackupUrl::parse(&text).expect("valid url parses"), u);
    }

    #[test]
    fn template_round_trips(t in template()) {
        prop_assume!(values(&t).iter().all(|v| representable(v)));
        let text = t.render().expect("representable values render");
        prop_assert_eq!(Template::parse(&text).expect("written template parses"), t);
    }

    /// parse(render(x)) == x for every template render accepts, and render refuses exactly
    /// the values that have no exact form.
    #[test]
    fn hostile_templates_read_back_as_written_or_are_refused(t in template_of(hostile_value())) {
        let all = values(&t).iter().all(|v| representable(v));
        match t.render() {
            Ok(text) => {
                prop_assert!(all, "rendered a value with no exact form:\n{}", text);
                let again = Template::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
                prop_assert_eq!(again, t);
            }
            Err(e) => prop_assert!(!all, "refused a representable template: {}", e),
        }
    }
}

#[test]
fn empty_job_id_round_trips() {
    let text = "backstop://100//0:a1b2c3d4/var/lib/one//datastores/0/22/backup/disk.0.0";
    let u = BackupUrl::parse(text).expect("parses");
    assert_eq!(u.job_id, None);
    assert_eq!(u.to_string(), text);
}
