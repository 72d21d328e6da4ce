//! Job and datastore templates (OpenNebula template syntax, driver contract §11.1), validated into what
//! the runner needs. Errors name the attribute.

use crate::Error;
use crate::error::input;
use crate::retention::Keep;
use crate::runner::{BackupDatastore, ChainPolicy, JobConfig, Mode};
use crate::schedule::SchedAction;
use crate::scheduler::Execution;
use backstop_protocol::message::Datastore;
use backstop_protocol::message::IncrementMode;
use backstop_protocol::template::{Template, Value, vector_get};

pub use crate::error::TemplateError;

fn bad<T>(m: String) -> Result<T, TemplateError> {
    Err(TemplateError(m))
}

/// A parsed template that remembers where each attribute was written, so a bad value is
/// reported as `line N: NAME is ...`.
struct Located {
    t: Template,
    lines: Vec<usize>,
}

impl Located {
    fn parse(text: &str) -> Result<Located, TemplateError> {
        let (t, lines) = Template::parse_with_lines(text)
            .map_err(|e| TemplateError(format!("template: {e}")))?;
        Ok(Located { t, lines })
    }

    /// The first single value of `name`, trimmed; empty counts as absent.
    fn get(&self, name: &str) -> Option<&str> {
        self.t.get(name).map(str::trim).filter(|v| !v.is_empty())
    }

    /// `line N: message` for the line `name` was first written on.
    fn err(&self, name: &str, message: String) -> TemplateError {
        let line = self
            .t
            .attributes
            .iter()
            .zip(&self.lines)
            .find(|(a, _)| a.name.eq_ignore_ascii_case(name))
            .map(|(_, l)| *l);
        match line {
            Some(l) => TemplateError(format!("line {l}: {message}")),
            None => TemplateError(message),
        }
    }

    fn yes(&self, name: &str) -> Result<bool, TemplateError> {
        match self.get(name).map(str::to_ascii_uppercase).as_deref() {
            None | Some("NO") => Ok(false),
            Some("YES") => Ok(true),
            Some(other) => Err(self.err(name, format!("{name} is {other:?}; use YES or NO"))),
        }
    }

    fn ids<T: std::str::FromStr>(&self, name: &str) -> Result<Vec<T>, TemplateError> {
        self.t
            .get(name)
            .unwrap_or("")
            .split([',', ' '])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|_| self.err(name, format!("{name} holds {s:?}, not an id")))
            })
            .collect()
    }
}

/// A job template, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTemplate {
    pub name: String,
    pub priority: u8,
    pub execution: Execution,
    pub vms: Vec<u64>,
    /// OpenNebula mode: VMs carrying one of these labels (or a label below one) are backed
    /// up too, as oned lists them at each run.
    pub labels: Vec<String>,
    pub datastore_id: u64,
    pub mode: Mode,
    pub keep_last: u32,
    /// KEEP_LAST and the period rules (KEEP_HOURLY ... KEEP_YEARLY) of retention plans.
    pub keep: Keep,
    pub fs_freeze: String,
    pub backup_volatile: bool,
    pub disk_ids: Option<Vec<u32>>,
    pub reset: bool,
    /// When a chain starts anew on its own (MAX_INCREMENTS, CHAIN_MAX_DAYS).
    pub chain: ChainPolicy,
    /// INCREMENT_MODE: CBT (the default) or SNAPSHOT.
    pub increment_mode: IncrementMode,
    /// The template's `SCHED_ACTION` vectors, validated (TIME is an epoch, or `+N` seconds
    /// from now).
    pub sched_actions: Vec<SchedAction>,
}

impl JobTemplate {
    pub fn parse(text: &str) -> Result<JobTemplate, TemplateError> {
        let t = Located::parse(text)?;
        let name = t
            .get("NAME")
            .ok_or_else(|| TemplateError("NAME is missing".into()))?
            .to_string();
        let priority = match t.get("PRIORITY") {
            None => 50,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= 99 => n,
                _ => return Err(t.err("PRIORITY", format!("PRIORITY is {p:?}; use 0 to 99"))),
            },
        };
        let execution = match t.get("EXECUTION").map(str::to_ascii_uppercase).as_deref() {
            None | Some("SEQUENTIAL") => Execution::Sequential,
            Some("PARALLEL") => Execution::Parallel,
            Some(e) => {
                return Err(t.err(
                    "EXECUTION",
                    format!("EXECUTION is {e:?}; use SEQUENTIAL or PARALLEL"),
                ));
            }
        };
        let mut vms: Vec<u64> = t.ids("BACKUP_VMS")?;
        vms.dedup();
        let labels: Vec<String> = t
            .get("LABELS")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        let datastore_id = t
            .get("DATASTORE_ID")
            .ok_or_else(|| TemplateError("DATASTORE_ID is missing".into()))?;
        let datastore_id = datastore_id.parse().map_err(|_| {
            t.err(
                "DATASTORE_ID",
                format!("DATASTORE_ID is {datastore_id:?}, not an id"),
            )
        })?;
        let mode = match t.get("MODE").map(str::to_ascii_uppercase).as_deref() {
            None | Some("FULL") => Mode::Full,
            Some("INCREMENT") => Mode::Increment,
            Some(m) => return Err(t.err("MODE", format!("MODE is {m:?}; use FULL or INCREMENT"))),
        };
        let increment_mode = match t
            .get("INCREMENT_MODE")
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("CBT") => IncrementMode::Cbt,
            Some("SNAPSHOT") => IncrementMode::Snapshot,
            Some(m) => {
                return Err(t.err(
                    "INCREMENT_MODE",
                    format!("INCREMENT_MODE is {m:?}; use CBT or SNAPSHOT"),
                ));
            }
        };
        let keep_last = match t.get("KEEP_LAST") {
            None => 0,
            Some(k) => k
                .parse()
                .map_err(|_| t.err("KEEP_LAST", format!("KEEP_LAST is {k:?}, not a number")))?,
        };
        let count = |name: &str| -> Result<u32, TemplateError> {
            match t.get(name) {
                None => Ok(0),
                Some(k) => k
                    .parse()
                    .map_err(|_| t.err(name, format!("{name} is {k:?}, not a number"))),
            }
        };
        let keep = Keep {
            last: keep_last,
            hourly: count("KEEP_HOURLY")?,
            daily: count("KEEP_DAILY")?,
            weekly: count("KEEP_WEEKLY")?,
            monthly: count("KEEP_MONTHLY")?,
            yearly: count("KEEP_YEARLY")?,
        };
        let fs_freeze = match t.get("FS_FREEZE").map(str::to_ascii_uppercase) {
            None => "NONE".to_string(),
            Some(f) if ["NONE", "AGENT", "SUSPEND"].contains(&f.as_str()) => f,
            Some(f) => {
                return Err(t.err(
                    "FS_FREEZE",
                    format!("FS_FREEZE is {f:?}; use NONE, AGENT or SUSPEND"),
                ));
            }
        };
        let positive = |name: &str| -> Result<Option<u32>, TemplateError> {
            match t.get(name) {
                None => Ok(None),
                Some(k) => match k.parse::<u32>() {
                    Ok(n) if n > 0 => Ok(Some(n)),
                    _ => Err(t.err(name, format!("{name} is {k:?}, not a whole number above 0"))),
                },
            }
        };
        let chain = ChainPolicy {
            max_increments: positive("MAX_INCREMENTS")?,
            max_days: positive("CHAIN_MAX_DAYS")?,
        };
        if mode == Mode::Full && (chain.max_increments.is_some() || chain.max_days.is_some()) {
            return bad("MAX_INCREMENTS and CHAIN_MAX_DAYS apply to MODE=INCREMENT only".into());
        }
        let disk_ids = match t.t.get("DISK_IDS") {
            None => None,
            Some(_) => Some(t.ids("DISK_IDS")?),
        };
        let now = jiff::Timestamp::now().as_second();
        let mut sched_actions = Vec::new();
        for (a, line) in t.t.attributes.iter().zip(&t.lines) {
            if !a.name.eq_ignore_ascii_case("SCHED_ACTION") {
                continue;
            }
            let Value::Vector(pairs) = &a.value else {
                return bad(format!(
                    "line {line}: SCHED_ACTION must be a vector [TIME=..., REPEAT=..., ...]"
                ));
            };
            sched_actions.push(
                sched_action(pairs, now).map_err(|m| TemplateError(format!("line {line}: {m}")))?,
            );
        }
        Ok(JobTemplate {
            sched_actions,
            name,
            priority,
            execution,
            vms,
            labels,
            datastore_id,
            mode,
            keep_last,
            keep,
            fs_freeze,
            backup_volatile: t.yes("BACKUP_VOLATILE")?,
            disk_ids,
            reset: t.yes("RESET")?,
            chain,
            increment_mode,
        })
    }

    pub fn config(&self, job_id: u64) -> JobConfig {
        JobConfig {
            job_id: Some(job_id),
            mode: self.mode,
            // With period rules, retention follows the plan (docs/retention.md), not the
            // datastore's KEEP_LAST after each backup, which would cut the older points.
            keep_last: if self.keep.has_periods() {
                0
            } else {
                self.keep_last
            },
            fs_freeze: self.fs_freeze.clone(),
            backup_volatile: self.backup_volatile,
            disk_ids: self.disk_ids.clone(),
            reset: self.reset,
            chain: self.chain,
            increment_mode: self.increment_mode,
        }
    }
}

/// One `SCHED_ACTION=[...]` vector.
fn sched_action(pairs: &[(String, String)], now: i64) -> Result<SchedAction, TemplateError> {
    let num = |key: &str| -> Result<Option<i64>, TemplateError> {
        match vector_get(pairs, key)
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| TemplateError(format!("SCHED_ACTION: {key} is {v:?}, not a number"))),
        }
    };
    let time = match vector_get(pairs, "TIME").map(str::trim) {
        None | Some("") => return Err(TemplateError("SCHED_ACTION: TIME is missing".into())),
        Some(v) => match v.strip_prefix('+') {
            Some(rel) => rel.parse::<i64>().map(|n| now + n),
            None => v.parse::<i64>(),
        }
        .map_err(|_| {
            TemplateError(format!(
                "SCHED_ACTION: TIME is {v:?}; use an epoch or +seconds"
            ))
        })?,
    };
    SchedAction::new(
        time,
        num("REPEAT")?.unwrap_or(-1),
        vector_get(pairs, "DAYS").unwrap_or(""),
        num("END_TYPE")?.unwrap_or(0),
        num("END_VALUE")?,
    )
    .map_err(|e| TemplateError(e.to_string()))
}

/// The template text to store for a job: everything but its `SCHED_ACTION`s, which live in
/// their own table (`show` lists them).
pub fn without_sched_actions(text: &str) -> Result<String, TemplateError> {
    let mut t = Template::parse(text).map_err(|e| TemplateError(format!("template: {e}")))?;
    if !t
        .attributes
        .iter()
        .any(|a| a.name.eq_ignore_ascii_case("SCHED_ACTION"))
    {
        return Ok(text.to_string());
    }
    t.attributes
        .retain(|a| !a.name.eq_ignore_ascii_case("SCHED_ACTION"));
    t.render()
        .map_err(|e| TemplateError(format!("template: {e}")))
}

fn cdata(v: &str) -> String {
    format!("<![CDATA[{}]]>", v.replace("]]>", "]]]]><![CDATA[>"))
}

/// A datastore or remote of the state as the actions see it.
pub fn state_datastore(
    list: &[crate::state::Named],
    id: u64,
    what: &str,
    location: &str,
) -> Result<Datastore, Error> {
    let text = &list
        .iter()
        .find(|d| d.id == id)
        .ok_or_else(|| input(format!("there is no {what} {id}")))?
        .template;
    let (_, ds) = datastore(id, text, location).map_err(|x| input(format!("{what} {id}: {x}")))?;
    let root = backstop_protocol::xml::Element::parse(&ds.document)
        .map_err(|x| input(format!("{what} {id}: {x}")))?;
    Datastore::from_xml(&root).map_err(|x| input(format!("{what} {id}: {x}")))
}

/// A backup datastore from its template (NAME, DS_MAD, BASE_PATH and the driver's attributes).
pub fn datastore(
    id: u64,
    text: &str,
    datastore_location: &str,
) -> Result<(String, BackupDatastore), TemplateError> {
    if crate::oned::is_oned(text) {
        // OpenNebula mode: oned holds the datastore (docs/opennebula-mode.md).
        let client = crate::oned::client(text).map_err(|e| TemplateError(e.to_string()))?;
        return crate::oned::datastore(&client, id).map_err(|e| TemplateError(e.to_string()));
    }
    let located = Located::parse(text)?;
    let get = |n: &str| located.get(n);
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
    let attrs: String = located
        .t
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
        assert!(j.sched_actions.is_empty());
        assert_eq!(
            j.config(1).keep_last,
            2,
            "KEEP_LAST alone: after each backup"
        );
        let j =
            JobTemplate::parse("NAME=a\nDATASTORE_ID=1\nKEEP_LAST=2\nKEEP_DAILY=7\nKEEP_YEARLY=1")
                .expect("periods");
        assert_eq!(
            j.keep.attributes(),
            [("KEEP_LAST", 2), ("KEEP_DAILY", 7), ("KEEP_YEARLY", 1)]
        );
        assert_eq!(j.config(1).keep_last, 0, "with periods: by the plan only");
        let e = JobTemplate::parse("NAME=a\nDATASTORE_ID=1\nKEEP_WEEKLY=-1").expect_err("negative");
        assert!(e.to_string().contains("KEEP_WEEKLY is \"-1\""), "{e}");
        let text = "NAME=a\nDATASTORE_ID=1\nSCHED_ACTION=[TIME=1800000000,REPEAT=0,DAYS=\"1,5\",\
                    END_TYPE=1,END_VALUE=3]\nSCHED_ACTION=[TIME=\"+3600\"]\n";
        let j = JobTemplate::parse(text).expect("sched");
        assert_eq!(j.sched_actions.len(), 2);
        assert_eq!(j.sched_actions[0].days, [1, 5]);
        assert_eq!(j.sched_actions[0].end, crate::schedule::End::Times(3));
        let soon = j.sched_actions[1].time - jiff::Timestamp::now().as_second();
        assert!((3500..=3600).contains(&soon), "+3600 is relative: {soon}");
        let stored = without_sched_actions(text).expect("strip");
        assert!(!stored.contains("SCHED_ACTION") && stored.contains("NAME"));
        for (text, want) in [
            ("DATASTORE_ID=1", "NAME is missing"),
            ("NAME=a", "DATASTORE_ID is missing"),
            ("NAME=a\nDATASTORE_ID=1\nMODE=DAILY", "MODE is \"DAILY\""),
            (
                "NAME=a\nDATASTORE_ID=1\nPRIORITY=100",
                "line 3: PRIORITY is \"100\"",
            ),
            (
                "NAME=a\n# keep two\nKEEP_LAST=two\nDATASTORE_ID=1",
                "line 3: KEEP_LAST is \"two\"",
            ),
            ("NAME=a\nDATASTORE_ID=1\n\nRESET=maybe", "line 4: RESET is"),
            (
                "NAME=a\nDATASTORE_ID=1\nBACKUP_VMS=\"1,x\"",
                "BACKUP_VMS holds \"x\"",
            ),
            (
                "NAME=a\nDATASTORE_ID=1\nINCREMENT_MODE=DELTA",
                "line 3: INCREMENT_MODE is \"DELTA\"; use CBT or SNAPSHOT",
            ),
            ("NAME=a\nDATASTORE_ID=1\nEXECUTION=LATER", "EXECUTION is"),
            ("NAME=\"a", "template: line 1"),
            (
                "NAME=a\nDATASTORE_ID=1\nSCHED_ACTION=[TIME=1,\n REPEAT=0]",
                "line 3: SCHED_ACTION: DAYS is empty",
            ),
            (
                "NAME=a\nDATASTORE_ID=1\nSCHED_ACTION=[REPEAT=3,DAYS=4]",
                "line 3: SCHED_ACTION: TIME is missing",
            ),
            (
                "NAME=a\nDATASTORE_ID=1\n\nSCHED_ACTION=[TIME=tomorrow]",
                "line 4: SCHED_ACTION: TIME is \"tomorrow\"",
            ),
            (
                "NAME=a\nDATASTORE_ID=1\nSCHED_ACTION=5",
                "line 3: SCHED_ACTION must be",
            ),
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

    #[test]
    fn a_chain_policy_starts_a_new_chain_on_time() {
        let day = 86_400;
        let policy = ChainPolicy {
            max_increments: Some(3),
            max_days: Some(7),
        };
        // The FULL at t=0, increments each day after.
        let chain = |n: i64| (0..=n).map(|k| k * day).collect::<Vec<_>>();
        assert_eq!(policy.due(&[], 0), None, "no chain yet: a FULL anyway");
        assert_eq!(policy.due(&chain(2), 3 * day), None);
        assert!(
            policy
                .due(&chain(3), 4 * day)
                .is_some_and(|w| w.contains("3 increments (MAX_INCREMENTS=3)")),
        );
        let by_age = ChainPolicy {
            max_increments: None,
            max_days: Some(7),
        };
        assert_eq!(by_age.due(&chain(1), 7 * day - 1), None, "a second before");
        assert!(
            by_age
                .due(&chain(1), 7 * day)
                .is_some_and(|w| w.contains("7 days old (CHAIN_MAX_DAYS=7)")),
        );
        assert_eq!(ChainPolicy::default().due(&chain(500), 10_000 * day), None);
    }

    #[test]
    fn chain_policies_are_read_and_checked() {
        let base = "NAME=a\nDATASTORE_ID=1\nMODE=INCREMENT\n";
        let t = JobTemplate::parse(&format!("{base}MAX_INCREMENTS=6\nCHAIN_MAX_DAYS=30"))
            .expect("policy");
        assert_eq!(
            t.chain,
            ChainPolicy {
                max_increments: Some(6),
                max_days: Some(30)
            }
        );
        assert_eq!(t.config(1).chain, t.chain);
        for bad in ["MAX_INCREMENTS=0", "MAX_INCREMENTS=-1", "CHAIN_MAX_DAYS=x"] {
            let e = JobTemplate::parse(&format!("{base}{bad}")).expect_err(bad);
            assert!(e.to_string().contains("not a whole number above 0"), "{e}");
        }
        let e = JobTemplate::parse("NAME=a\nDATASTORE_ID=1\nMAX_INCREMENTS=3").expect_err("full");
        assert!(e.to_string().contains("MODE=INCREMENT only"), "{e}");
    }
}
