//! Job and datastore templates (OpenNebula template syntax, spec §11.1), validated into what
//! the runner needs. Errors name the attribute.

use crate::runner::{BackupDatastore, JobConfig, Mode};
use crate::scheduler::Execution;
use backstop_protocol::template::Template;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

fn bad<T>(m: String) -> Result<T, TemplateError> {
    Err(TemplateError(m))
}

/// A job template, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTemplate {
    pub name: String,
    pub priority: u8,
    pub execution: Execution,
    pub vms: Vec<u64>,
    pub datastore_id: u64,
    pub mode: Mode,
    pub keep_last: u32,
    pub fs_freeze: String,
    pub backup_volatile: bool,
    pub disk_ids: Option<Vec<u32>>,
    pub reset: bool,
}

fn yes(v: Option<&str>, name: &str) -> Result<bool, TemplateError> {
    match v.map(|s| s.trim().to_ascii_uppercase()).as_deref() {
        None | Some("") | Some("NO") => Ok(false),
        Some("YES") => Ok(true),
        Some(other) => bad(format!("{name} is {other:?}; use YES or NO")),
    }
}

fn ids<T: std::str::FromStr>(v: &str, name: &str) -> Result<Vec<T>, TemplateError> {
    v.split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| TemplateError(format!("{name} holds {s:?}, not an id")))
        })
        .collect()
}

impl JobTemplate {
    pub fn parse(text: &str) -> Result<JobTemplate, TemplateError> {
        let t = Template::parse(text).map_err(|e| TemplateError(format!("template: {e}")))?;
        let get = |n: &str| t.get(n).map(str::trim).filter(|v| !v.is_empty());
        let name = get("NAME")
            .ok_or_else(|| TemplateError("NAME is missing".into()))?
            .to_string();
        let priority = match get("PRIORITY") {
            None => 50,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= 99 => n,
                _ => return bad(format!("PRIORITY is {p:?}; use 0 to 99")),
            },
        };
        let execution = match get("EXECUTION").map(str::to_ascii_uppercase).as_deref() {
            None | Some("SEQUENTIAL") => Execution::Sequential,
            Some("PARALLEL") => Execution::Parallel,
            Some(e) => return bad(format!("EXECUTION is {e:?}; use SEQUENTIAL or PARALLEL")),
        };
        let mut vms: Vec<u64> = ids(get("BACKUP_VMS").unwrap_or(""), "BACKUP_VMS")?;
        vms.dedup();
        let datastore_id =
            get("DATASTORE_ID").ok_or_else(|| TemplateError("DATASTORE_ID is missing".into()))?;
        let datastore_id = datastore_id
            .parse()
            .map_err(|_| TemplateError(format!("DATASTORE_ID is {datastore_id:?}, not an id")))?;
        let mode = match get("MODE").map(str::to_ascii_uppercase).as_deref() {
            None | Some("FULL") => Mode::Full,
            Some("INCREMENT") => Mode::Increment,
            Some(m) => return bad(format!("MODE is {m:?}; use FULL or INCREMENT")),
        };
        if let Some(im) = get("INCREMENT_MODE")
            && !im.eq_ignore_ascii_case("CBT")
        {
            return bad(format!(
                "INCREMENT_MODE is {im:?}; backstop supports CBT only"
            ));
        }
        let keep_last = match get("KEEP_LAST") {
            None => 0,
            Some(k) => k
                .parse()
                .map_err(|_| TemplateError(format!("KEEP_LAST is {k:?}, not a number")))?,
        };
        let fs_freeze = match get("FS_FREEZE").map(str::to_ascii_uppercase) {
            None => "NONE".to_string(),
            Some(f) if ["NONE", "AGENT", "SUSPEND"].contains(&f.as_str()) => f,
            Some(f) => return bad(format!("FS_FREEZE is {f:?}; use NONE, AGENT or SUSPEND")),
        };
        let disk_ids = match t.get("DISK_IDS") {
            None => None,
            Some(v) => Some(ids(v, "DISK_IDS")?),
        };
        Ok(JobTemplate {
            name,
            priority,
            execution,
            vms,
            datastore_id,
            mode,
            keep_last,
            fs_freeze,
            backup_volatile: yes(get("BACKUP_VOLATILE"), "BACKUP_VOLATILE")?,
            disk_ids,
            reset: yes(get("RESET"), "RESET")?,
        })
    }

    pub fn config(&self, job_id: u64) -> JobConfig {
        JobConfig {
            job_id: Some(job_id),
            mode: self.mode,
            keep_last: self.keep_last,
            fs_freeze: self.fs_freeze.clone(),
            backup_volatile: self.backup_volatile,
            disk_ids: self.disk_ids.clone(),
            reset: self.reset,
        }
    }
}

fn cdata(v: &str) -> String {
    format!("<![CDATA[{}]]>", v.replace("]]>", "]]]]><![CDATA[>"))
}

/// A backup datastore from its template (NAME, DS_MAD, BASE_PATH and the driver's attributes).
pub fn datastore(
    id: u64,
    text: &str,
    datastore_location: &str,
) -> Result<(String, BackupDatastore), TemplateError> {
    let t = Template::parse(text).map_err(|e| TemplateError(format!("template: {e}")))?;
    let get = |n: &str| t.get(n).map(str::trim).filter(|v| !v.is_empty());
    let name = get("NAME")
        .ok_or_else(|| TemplateError("NAME is missing".into()))?
        .to_string();
    let ds_mad = get("DS_MAD").unwrap_or("backstop").to_string();
    if get("RESTIC_PASSWORD").is_none() {
        return bad("RESTIC_PASSWORD is missing".into());
    }
    let base = get("BASE_PATH")
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}/{id}", datastore_location.trim_end_matches('/')));
    let attrs: String = t
        .attributes
        .iter()
        .filter(|a| !matches!(a.name.as_str(), "NAME" | "DS_MAD" | "BASE_PATH" | "TYPE"))
        .filter_map(|a| match &a.value {
            backstop_protocol::template::Value::Single(v) => {
                Some(format!("<{0}>{1}</{0}>", a.name, cdata(v)))
            }
            backstop_protocol::template::Value::Vector(_) => None,
        })
        .collect();
    let document = format!(
        "<DATASTORE><ID>{id}</ID><NAME>{}</NAME><DS_MAD>{}</DS_MAD><TM_MAD>-</TM_MAD>\
         <BASE_PATH>{}</BASE_PATH><TYPE>3</TYPE><TEMPLATE>{attrs}</TEMPLATE></DATASTORE>",
        cdata(&name),
        cdata(&ds_mad),
        cdata(&base)
    );
    Ok((
        name,
        BackupDatastore {
            id,
            ds_mad,
            document,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_templates_are_normalised_and_checked() {
        let j = JobTemplate::parse(
            "NAME = \"nightly\"\nBACKUP_VMS = \"3,1,1,2\"\nDATASTORE_ID = 100\nMODE = increment\n\
             KEEP_LAST = 2\nEXECUTION = PARALLEL\nPRIORITY = 60\n",
        )
        .expect("parse");
        assert_eq!(j.vms, [3, 1, 2], "consecutive duplicates go, order stays");
        assert_eq!((j.mode, j.keep_last, j.priority), (Mode::Increment, 2, 60));
        assert_eq!(j.execution, Execution::Parallel);
        assert_eq!(j.fs_freeze, "NONE");
        for (text, want) in [
            ("DATASTORE_ID=1", "NAME is missing"),
            ("NAME=a", "DATASTORE_ID is missing"),
            ("NAME=a\nDATASTORE_ID=1\nMODE=DAILY", "MODE is \"DAILY\""),
            (
                "NAME=a\nDATASTORE_ID=1\nPRIORITY=100",
                "PRIORITY is \"100\"",
            ),
            (
                "NAME=a\nDATASTORE_ID=1\nBACKUP_VMS=\"1,x\"",
                "BACKUP_VMS holds \"x\"",
            ),
            (
                "NAME=a\nDATASTORE_ID=1\nINCREMENT_MODE=SNAPSHOT",
                "CBT only",
            ),
            ("NAME=a\nDATASTORE_ID=1\nEXECUTION=LATER", "EXECUTION is"),
            ("NAME=\"a", "template: line 1"),
        ] {
            let e = JobTemplate::parse(text).expect_err(want);
            assert!(e.to_string().contains(want), "{e} vs {want}");
        }
    }

    #[test]
    fn datastore_documents() {
        let (name, ds) = datastore(
            100,
            "NAME=backups\nRESTIC_PASSWORD=\"s3cret\"\nRESTIC_SFTP_SERVER=bks",
            "/var/lib/one//datastores",
        )
        .expect("datastore");
        assert_eq!(name, "backups");
        assert_eq!(ds.ds_mad, "backstop");
        let root = backstop_protocol::xml::Element::parse(&ds.document).expect("xml");
        let d = backstop_protocol::message::Datastore::from_xml(&root).expect("datastore");
        assert_eq!(
            d.base_path,
            "/var/lib/one/datastores/100".replace("one/", "one//")
        );
        assert_eq!(d.attribute("RESTIC_PASSWORD"), Some("s3cret"));
        assert!(datastore(1, "NAME=x", "/d").is_err());
    }
}
