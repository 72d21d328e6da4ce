//! The attributes every kind of job template shares (sync and verify jobs; see docs/sync.md):
//! `NAME`, `DATASTORE_ID`, the repositories (`VMS`, `BACKUP_JOBS`, `TAGS`), `PARALLEL` and when
//! the scheduler daemon runs it (`EVERY` or `SCHEDULE`), and the readers of `YES`/`NO` and number
//! attributes.

use crate::calendar::When;
use crate::error::TemplateError;
use crate::filters::Selection;
use backstop_protocol::template::Template;

/// A `YES`/`NO` attribute (any case), `default` when absent.
pub fn yes_no(t: &Template, name: &str, default: bool) -> Result<bool, TemplateError> {
    match t.get(name).map(|v| v.trim().to_ascii_uppercase()) {
        None => Ok(default),
        Some(v) if v == "YES" => Ok(true),
        Some(v) if v == "NO" => Ok(false),
        Some(v) => Err(TemplateError(format!("{name} {v:?} is not YES or NO"))),
    }
}

/// A number attribute, `default` when absent.
pub fn number_or(t: &Template, name: &str, default: u64) -> Result<u64, TemplateError> {
    match t.get(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| TemplateError(format!("{name} {v:?} is not a number"))),
    }
}

/// A number attribute that must be given.
pub fn required_number(t: &Template, name: &str) -> Result<u64, TemplateError> {
    let v = t
        .get(name)
        .ok_or_else(|| TemplateError(format!("{name} is missing")))?;
    v.trim()
        .parse()
        .map_err(|_| TemplateError(format!("{name} {v:?} is not a number")))
}

/// What a sync and a verify job's templates both say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobBasics {
    pub name: String,
    pub datastore_id: u64,
    pub select: Selection,
    /// When the scheduler daemon runs it (`EVERY` or `SCHEDULE`); `None`: only when asked.
    pub when: Option<When>,
    /// Repositories worked on at once (`PARALLEL`, 1 to 16, default 2).
    pub parallel: usize,
}

impl JobBasics {
    pub fn parse(t: &Template) -> Result<JobBasics, TemplateError> {
        let name = t
            .get("NAME")
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| TemplateError("NAME is missing".into()))?
            .to_string();
        let parallel = number_or(t, "PARALLEL", 2)?;
        if !(1..=16).contains(&parallel) {
            return Err(TemplateError(format!(
                "PARALLEL {parallel} is not between 1 and 16"
            )));
        }
        Ok(JobBasics {
            name,
            datastore_id: required_number(t, "DATASTORE_ID")?,
            select: Selection::parse(t)?,
            when: When::parse(t)?,
            parallel: parallel as usize,
        })
    }
}
