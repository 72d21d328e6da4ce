//! Creating and changing what the runner knows: backup jobs and their scheduled actions,
//! datastores, remotes, VMs, sync and verify jobs. Each is checked before it is stored; a
//! refused one leaves the state as it was.

use super::job_row;
use crate::Error;
use crate::error::input;
use crate::model::{self, JobTemplate};
use crate::state::State;
use crate::sync::SyncTemplate;
use crate::verify_job::VerifyTemplate;
use backstop_protocol::template::Template;
use std::fmt;

/// A file's text and the name errors give it (its path as the user wrote it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileText {
    pub text: String,
    pub name: String,
}

/// An attribute set on top of a template: `Some` replaces every attribute of its name (in
/// any case), an empty value removes it; `None` leaves it as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    pub value: Option<String>,
}

impl Setting {
    pub fn new(name: &'static str, value: Option<String>) -> Setting {
        Setting { name, value }
    }
}

/// A template given as a file, settings, or both (the settings win).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Definition {
    pub file: Option<FileText>,
    pub settings: Vec<Setting>,
}

/// What was created: its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    pub id: u64,
}

impl fmt::Display for Created {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ID: {}", self.id)
    }
}

/// A template's text with `settings` on top. `what` names the text in errors.
pub fn with_settings(text: &str, what: &str, settings: &[Setting]) -> Result<String, Error> {
    if settings.iter().all(|s| s.value.is_none()) {
        return Ok(text.to_string());
    }
    let mut t = Template::parse(text).map_err(|x| input(format!("{what}: template: {x}")))?;
    for Setting { name: attr, value } in settings {
        let Some(v) = value else { continue };
        t.attributes.retain(|a| !a.name.eq_ignore_ascii_case(attr));
        // EVERY and SCHEDULE are one choice: setting one drops the other.
        let other = match *attr {
            "EVERY" => Some("SCHEDULE"),
            "SCHEDULE" => Some("EVERY"),
            _ => None,
        };
        if let Some(o) = other {
            t.attributes.retain(|a| !a.name.eq_ignore_ascii_case(o));
        }
        if !v.trim().is_empty() {
            t.push(attr, v.clone());
        }
    }
    t.render().map_err(|x| input(format!("{what}: {x}")))
}

/// The template a create or update ends with: the file's (else `base`, the stored one for an
/// update, empty for a create) with the settings on top; and what to name in errors.
struct Resolved {
    text: String,
    what: String,
}

fn resolve(d: &Definition, base: &str) -> Result<Resolved, Error> {
    let (text, what) = match &d.file {
        Some(f) => (f.text.clone(), f.name.clone()),
        None if base.is_empty() => (String::new(), "the flags".to_string()),
        None => (base.to_string(), "the job's template".to_string()),
    };
    Ok(Resolved {
        text: with_settings(&text, &what, &d.settings)?,
        what,
    })
}

/// A job backs up into a backup datastore, never straight into a remote; LABELS choose VMs
/// only in OpenNebula mode (oned lists the labels).
fn not_a_remote(st: &State, job: &JobTemplate) -> Result<(), Error> {
    let id = job.datastore_id;
    if st.remotes()?.iter().any(|r| r.id == id) {
        return Err(input(format!(
            "DATASTORE_ID {id} is a remote, not a backup datastore (remotes receive copies through sync jobs)"
        )));
    }
    if !job.labels.is_empty()
        && !st
            .datastores()?
            .iter()
            .any(|d| d.id == id && crate::oned::is_oned(&d.template))
    {
        return Err(input(format!(
            "LABELS needs OpenNebula mode: DATASTORE_ID {id} is not a datastore imported from oned (backupjob datastore import)"
        )));
    }
    Ok(())
}

/// What a backup job names exists: its datastore in this state, its VMs registered (in
/// OpenNebula mode: known to oned, and not deleted).
fn names_exist(st: &State, job: &JobTemplate) -> Result<(), Error> {
    let id = job.datastore_id;
    let Some(ds) = st.datastores()?.into_iter().find(|d| d.id == id) else {
        return Err(input(format!(
            "DATASTORE_ID {id}: there is no datastore {id} (backupjob datastore list)"
        )));
    };
    if crate::oned::is_oned(&ds.template) {
        let client = crate::oned::client(&ds.template)?;
        for vm in &job.vms {
            let doc = client.document_if_any("one.vm.info", *vm)?;
            let gone = match doc {
                None => true,
                Some(doc) => {
                    crate::oned::backup::Record::parse(&doc)
                        .map_err(|x| input(format!("oned's VM {vm}: {x}")))?
                        .state
                        == crate::oned::inventory::DONE
                }
            };
            if gone {
                return Err(input(format!(
                    "BACKUP_VMS: oned has no VM {vm} (or it was deleted)"
                )));
            }
        }
        return Ok(());
    }
    let registered: Vec<u64> = st.vms()?.iter().map(|v| v.id).collect();
    if let Some(vm) = job.vms.iter().find(|v| !registered.contains(v)) {
        return Err(input(format!(
            "BACKUP_VMS: VM {vm} is not registered (backupjob vm register)"
        )));
    }
    Ok(())
}

/// A backup job's template, parsed and its attribute names checked.
fn checked_job(text: &str, what: &str) -> Result<JobTemplate, Error> {
    let t = Template::parse(text).map_err(|x| input(format!("{what}: template: {x}")))?;
    crate::names::check(&t, crate::names::BACKUP_JOB, "backup job")
        .map_err(|x| input(format!("{what}: {x}")))?;
    JobTemplate::parse(text).map_err(|x| input(format!("{what}: {x}")))
}

/// Creates a backup job; its SCHED_ACTIONs go to their own table.
pub fn create_job(st: &mut State, d: &Definition) -> Result<Created, Error> {
    let Resolved { text, what } = resolve(d, "")?;
    let job = checked_job(&text, &what)?;
    not_a_remote(st, &job)?;
    names_exist(st, &job)?;
    let stored = model::without_sched_actions(&text).map_err(|x| input(x.to_string()))?;
    let id = st.create_job_with(
        &job.name,
        job.priority,
        &stored,
        &job.vms,
        &job.sched_actions,
    )?;
    Ok(Created { id })
}

/// A new template for a backup job, replacing its own or merged into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUpdate {
    pub job: u64,
    pub file: FileText,
    pub append: bool,
}

/// Replaces a job's template with a file's (or merges it in). NAME, PRIORITY and
/// SCHED_ACTION are not changed this way; a SCHED_ACTION in the file is said to `on_note`
/// as soon as it is seen (also when the update then fails).
pub fn update_job(
    st: &mut State,
    u: &JobUpdate,
    mut on_note: impl FnMut(&str),
) -> Result<(), Error> {
    use backstop_protocol::template::{Attribute, Value};
    let id = u.job;
    let file = &u.file.name;
    let crate::state::JobRow {
        name,
        template: old,
        ..
    } = job_row(st, id)?;
    let old = Template::parse(&old).map_err(|x| input(format!("backup job {id}: {x}")))?;
    let new = Template::parse(&u.file.text).map_err(|x| input(format!("{file}: template: {x}")))?;
    let fixed = ["NAME", "PRIORITY", "SCHED_ACTION"];
    if new.attributes.iter().any(|a| a.name == "SCHED_ACTION") {
        on_note(&format!(
            "{file}: SCHED_ACTION is not changed by update; use sched-add, sched-update or sched-delete"
        ));
    }
    let mut merged = if u.append {
        old.clone()
    } else {
        Template::default()
    };
    for a in new
        .attributes
        .iter()
        .filter(|a| !fixed.contains(&a.name.as_str()))
    {
        merged.attributes.retain(|b| b.name != a.name);
        merged.attributes.push(a.clone());
    }
    // What update cannot change stays as it was.
    for a in old
        .attributes
        .iter()
        .filter(|a| fixed.contains(&a.name.as_str()))
    {
        merged.attributes.retain(|b| b.name != a.name);
        merged.attributes.insert(0, a.clone());
    }
    // The job's current name (rename changes it outside the template).
    merged.attributes.retain(|b| b.name != "NAME");
    merged.attributes.insert(
        0,
        Attribute {
            name: "NAME".into(),
            value: Value::Single(name),
        },
    );
    let text = merged.render().map_err(|x| input(format!("{file}: {x}")))?;
    let job = checked_job(&text, file)?;
    not_a_remote(st, &job)?;
    names_exist(st, &job)?;
    st.set_job_template(id, &text, &job.vms)?;
    Ok(())
}

/// A new scheduled action of a job (SCHED_ACTION: TIME, REPEAT, DAYS, END_TYPE, END_VALUE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedAdd {
    pub job: u64,
    /// An epoch, or a local date and time (2026-11-22T03:00).
    pub time: String,
    /// -1..3, or none, weekly, monthly, yearly, hourly.
    pub repeat: String,
    pub days: String,
    pub end_type: i64,
    pub end_value: Option<i64>,
}

pub fn add_sched_action(st: &mut State, a: &SchedAdd) -> Result<Created, Error> {
    let id = a.job;
    if !st.jobs()?.iter().any(|j| j.id == id) {
        return Err(input(format!("there is no backup job {id}")));
    }
    let given = (!a.repeat.is_empty() && a.repeat != "-1" && a.repeat != "none")
        .then_some(a.repeat.as_str());
    let (epoch, repeat, days) = when(
        &a.time,
        given,
        Some(a.days.as_str()).filter(|d| !d.is_empty()),
        -1,
    )?;
    let days = days.unwrap_or_default();
    let sa = crate::schedule::SchedAction::new(epoch, repeat, &days, a.end_type, a.end_value)
        .map_err(|x| input(x.to_string()))?;
    let sid = st.add_sched_action(id, &sa)?;
    Ok(Created { id: sid })
}

/// A change to a scheduled action: a file holding `SCHED_ACTION = [...]`, values (which win
/// over the file's); what neither gives stays as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedUpdate {
    pub job: u64,
    pub sched: u64,
    pub file: Option<FileText>,
    pub time: Option<String>,
    pub repeat: Option<String>,
    pub days: Option<String>,
    pub end_type: Option<i64>,
    pub end_value: Option<i64>,
}

pub fn update_sched_action(st: &mut State, u: &SchedUpdate) -> Result<(), Error> {
    let (id, sched_id) = (u.job, u.sched);
    // A file's SCHED_ACTION gives the values the flags do not.
    let (mut time, mut repeat, mut days, mut end_type, mut end_value) = (
        u.time.clone(),
        u.repeat.clone(),
        u.days.clone(),
        u.end_type,
        u.end_value,
    );
    if let Some(f) = &u.file {
        use backstop_protocol::template::{Value, vector_get};
        let name = &f.name;
        let t = Template::parse(&f.text).map_err(|x| input(format!("{name}: template: {x}")))?;
        let pairs = t
            .attributes
            .iter()
            .find_map(|a| match &a.value {
                Value::Vector(p) if a.name == "SCHED_ACTION" => Some(p.clone()),
                _ => None,
            })
            .ok_or_else(|| input(format!("{name}: no SCHED_ACTION = [...] in it")))?;
        let get = |k: &str| vector_get(&pairs, k).map(str::to_string);
        let num = |k: &str| -> Result<Option<i64>, Error> {
            get(k)
                .map(|v| {
                    v.trim().parse().map_err(|_| {
                        input(format!("{name}: SCHED_ACTION: {k} is {v:?}, not a number"))
                    })
                })
                .transpose()
        };
        time = time.or(get("TIME"));
        repeat = repeat.or(get("REPEAT"));
        days = days.or(get("DAYS"));
        end_type = end_type.or(num("END_TYPE")?);
        end_value = end_value.or(num("END_VALUE")?);
    }
    let crate::state::SchedActionRow { action: old, .. } = st
        .sched_actions(id)?
        .into_iter()
        .find(|s| s.id == sched_id)
        .ok_or_else(|| {
            input(format!(
                "backup job {id} has no scheduled action {sched_id}"
            ))
        })?;
    let (old_type, old_value) = old.end.codes();
    let old_repeat = old.repeat.code();
    let old_days: Vec<String> = old.days.iter().map(u32::to_string).collect();
    let (time, repeat, days) = match &time {
        Some(t) => {
            let (time, r, d) = when(t, repeat.as_deref(), days.as_deref(), old_repeat)?;
            (time, r, d.or(days))
        }
        None => (
            old.time,
            match &repeat {
                Some(r) => parse_repeat(r)?,
                None => old_repeat,
            },
            days,
        ),
    };
    // An hourly REPEAT without DAYS runs every hour.
    let days = days.or_else(|| (repeat == 3 && old_repeat != 3).then(|| "1".to_string()));
    let mut sa = crate::schedule::SchedAction::new(
        time,
        repeat,
        days.as_deref().unwrap_or(&old_days.join(",")),
        end_type.unwrap_or(old_type),
        end_value.or(old_value),
    )
    .map_err(|x| input(x.to_string()))?;
    // A new time starts afresh; otherwise when it last ran stays.
    if sa.time == old.time {
        sa.done = old.done;
    }
    st.update_sched_action(sched_id, &sa, None)?;
    Ok(())
}

/// A point in time: an epoch, an RFC 3339 time, or a local date and time; `None` otherwise.
fn parse_time(time: &str) -> Option<i64> {
    let time = time.trim();
    if let Ok(t) = time.parse::<i64>() {
        return Some(t);
    }
    if let Ok(t) = time.parse::<jiff::Timestamp>() {
        return Some(t.as_second());
    }
    time.parse::<jiff::civil::DateTime>()
        .ok()
        .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::system()).ok())
        .map(|z| z.timestamp().as_second())
}

/// A scheduled action's TIME, REPEAT and DAYS from `--time` (with `--repeat` and `--days`
/// when given): the one time syntax every schedule of the runner takes.
/// - an epoch, an RFC 3339 time (`2026-12-08T03:00:00+01:00`) or a local date and time
///   (`2026-12-08T03:00`, `2026-12-08 03:00`): that TIME, repeated as `--repeat` says, else
///   as `keep_repeat` (the action's REPEAT before: a new time keeps it); a REPEAT that
///   becomes hourly without `--days` runs every hour;
/// - a calendar form, as sync and verify jobs' SCHEDULE takes (`mon..fri 02:30`, `daily`,
///   `hourly`, `*/6:00`): the next time it names, repeated weekly on its weekdays or every N
///   hours; it says when it repeats, so `--repeat` and `--days` are refused with it.
fn when(
    time: &str,
    repeat: Option<&str>,
    days: Option<&str>,
    keep_repeat: i64,
) -> Result<(i64, i64, Option<String>), Error> {
    if let Some(epoch) = parse_time(time) {
        let repeat = match repeat {
            Some(r) => parse_repeat(r)?,
            None => keep_repeat,
        };
        let days = days
            .map(str::to_string)
            .or_else(|| (repeat == 3 && keep_repeat != 3).then(|| "1".to_string()));
        return Ok((epoch, repeat, days));
    }
    let calendar = crate::calendar::Calendar::parse(time).map_err(|_| {
        input(format!(
            "--time {time:?} is not an epoch, a date and time (2026-12-08T03:00) or a calendar form (mon..fri 02:30, daily, hourly, */6:00)"
        ))
    })?;
    if repeat.is_some() || days.is_some() {
        return Err(input(format!(
            "--time {time:?} is a calendar form, which says when it repeats: give it without --repeat and --days"
        )));
    }
    let now = jiff::Timestamp::now().as_second();
    let a = calendar
        .as_sched_action(now, &jiff::tz::TimeZone::system())
        .ok_or_else(|| {
            input(format!(
                "--time {time:?}: a scheduled action runs at one time of day on chosen weekdays, or every N hours (N dividing 24) at one minute; add one scheduled action per time of day"
            ))
        })?;
    Ok((a.time, a.repeat, Some(a.days)))
}

/// A scheduled action's repeat: -1..3 or its name.
fn parse_repeat(repeat: &str) -> Result<i64, Error> {
    match repeat {
        "weekly" => Ok(0),
        "monthly" => Ok(1),
        "yearly" => Ok(2),
        "hourly" => Ok(3),
        "none" => Ok(-1),
        n => n.parse().map_err(|_| {
            input(format!(
                "--repeat {n:?}: use -1..3 or weekly, monthly, yearly, hourly"
            ))
        }),
    }
}

/// Adds oned's backup datastore `id` under its id (OpenNebula mode, docs/opennebula-mode.md):
/// checked with oned first, which must have it as a backup datastore. `endpoint` and `auth`
/// (a credentials file) are kept when given; otherwise oned is found as OpenNebula's tools
/// find it, at each use.
pub fn import_datastore(
    st: &mut State,
    id: u64,
    endpoint: Option<&str>,
    auth: Option<&std::path::Path>,
) -> Result<Created, Error> {
    let mut t = Template::default();
    t.push(crate::oned::ONED, "YES".to_string());
    if let Some(e) = endpoint {
        t.push("ONE_XMLRPC", e.to_string());
    }
    if let Some(a) = auth {
        let a =
            std::path::absolute(a).map_err(|x| input(format!("ONE_AUTH {}: {x}", a.display())))?;
        t.push("ONE_AUTH", a.display().to_string());
    }
    let text = t.render().map_err(|x| input(x.to_string()))?;
    let client = crate::oned::client(&text)?;
    let (name, _) = crate::oned::datastore(&client, id)?;
    if st
        .datastores()?
        .iter()
        .chain(st.remotes()?.iter())
        .any(|d| d.id == id)
    {
        return Err(input(format!(
            "this state has a datastore or remote {id} already; oned's datastore {id} keeps its id here"
        )));
    }
    let mut named = Template::default();
    named.push("NAME", name.clone());
    named.attributes.extend(t.attributes);
    let text = named.render().map_err(|x| input(x.to_string()))?;
    st.add_datastore_as(id, &name, &text)?;
    Ok(Created { id })
}

/// Adds a backup datastore from its template, checked with the id it will get.
pub fn create_datastore(st: &mut State, location: &str, f: &FileText) -> Result<Created, Error> {
    if crate::oned::is_oned(&f.text) {
        return Err(input(format!(
            "{}: ONED=YES: oned's datastores are added with `backupjob datastore import <id>`, under oned's id",
            f.name
        )));
    }
    let next = st.datastores()?.last().map_or(0, |d| d.id) + 1;
    let name = checked_datastore(location, next, f)?;
    let id = st.add_datastore(&name, &f.text)?;
    Ok(Created { id })
}

/// What `datastore update` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatastoreUpdated {
    /// The template changed; the password did not.
    Template,
    /// The password changed: every repository was given a key for the new one and lost the
    /// old one's (docs/rekey.md).
    Rekeyed(crate::rekey::Rekeyed),
}

impl fmt::Display for DatastoreUpdated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatastoreUpdated::Template => f.write_str("datastore updated"),
            DatastoreUpdated::Rekeyed(r) => write!(
                f,
                "datastore updated; new password: {} repositories re-keyed ({} keys added, {} removed)",
                r.repositories, r.keys_added, r.keys_removed
            ),
        }
    }
}

/// Replaces datastore `id`'s template with a file's (or merges the file's attributes into it
/// with `append`), checked as at create. A new RESTIC_PASSWORD re-keys every repository under
/// the datastore first (docs/rekey.md): a key for the new password is added to each before
/// the template changes, the old password's keys are removed after, so every repository opens
/// with the template's password at every moment. A change that moves the repositories too is
/// refused. oned's datastores are changed in oned (`onedatastore update`).
pub fn update_datastore(
    env: &crate::runner::Env,
    st: &mut State,
    id: u64,
    f: &FileText,
    append: bool,
) -> Result<DatastoreUpdate, Error> {
    let recipients = |st: &State| -> Result<Option<Vec<String>>, Error> {
        let Some(d) = st.datastores()?.into_iter().find(|d| d.id == id) else {
            return Ok(None);
        };
        if crate::oned::is_oned(&d.template) {
            return Ok(None);
        }
        let (_, ds) = crate::rekey::parsed(env, id, &d.template)?;
        Ok(backstop_datastore::settings::Settings::of(&ds)?
            .escrow
            .map(|r| r.names().to_vec()))
    };
    // A stored template that no longer reads must not stop the update that repairs it.
    let before = recipients(st).ok().flatten();
    let updated = update_template(env, st, id, f, append)?;
    let after = recipients(st)?;
    // New or other escrow recipients: every repository gets a key sealed to them now.
    let escrowed = match after {
        Some(_) if after != before => Some(
            crate::escrow::datastore(env, st, id)
                .map_err(|e| Error::Refused(format!("{updated}, but {e}")))?,
        ),
        _ => None,
    };
    Ok(DatastoreUpdate { updated, escrowed })
}

/// What `datastore update` did: the template (and password), and the escrow keys it added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatastoreUpdate {
    pub updated: DatastoreUpdated,
    pub escrowed: Option<crate::escrow::Escrowed>,
}

impl fmt::Display for DatastoreUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.updated)?;
        if let Some(e) = &self.escrowed {
            write!(f, "; {e}")?;
        }
        Ok(())
    }
}

fn update_template(
    env: &crate::runner::Env,
    st: &mut State,
    id: u64,
    f: &FileText,
    append: bool,
) -> Result<DatastoreUpdated, Error> {
    let crate::state::Named { template: old, .. } = st
        .datastores()?
        .into_iter()
        .find(|d| d.id == id)
        .ok_or_else(|| input(format!("there is no datastore {id}")))?;
    if crate::oned::is_oned(&old) {
        return Err(input(format!(
            "datastore {id} is oned's: change it with onedatastore update {id}"
        )));
    }
    let new = Template::parse(&f.text).map_err(|x| input(format!("{}: template: {x}", f.name)))?;
    let mut merged = if append {
        Template::parse(&old).map_err(|x| input(format!("datastore {id}: {x}")))?
    } else {
        Template::default()
    };
    for a in &new.attributes {
        merged
            .attributes
            .retain(|b| !b.name.eq_ignore_ascii_case(&a.name));
        merged.attributes.push(a.clone());
    }
    let text = merged
        .render()
        .map_err(|x| input(format!("{}: {x}", f.name)))?;
    if crate::oned::is_oned(&text) {
        return Err(input(format!(
            "{}: ONED=YES: oned's datastores are added with `backupjob datastore import {id}`",
            f.name
        )));
    }
    let checked = FileText {
        text: text.clone(),
        name: f.name.clone(),
    };
    let name = checked_datastore(&env.datastore_location, id, &checked)?;
    if let Some(pending) = st.rekey(id)? {
        // The same change given again completes it; another waits for it.
        if pending.new_template != text {
            return Err(input(format!(
                "a password change of datastore {id} is under way; give the same template again to complete it first, or give it up with datastore abort-rekey {id}"
            )));
        }
        return Ok(DatastoreUpdated::Rekeyed(crate::rekey::complete(
            env, st, id,
        )?));
    }
    let (_, before) = crate::rekey::parsed(env, id, &old)?;
    let (_, after) = crate::rekey::parsed(env, id, &text)?;
    let password = |ds: &backstop_protocol::message::Datastore| {
        backstop_datastore::target::password(ds).map_err(Error::from)
    };
    if password(&before)? == password(&after)? {
        st.update_datastore(id, &name, &text)?;
        return Ok(DatastoreUpdated::Template);
    }
    if let Some(moved) = crate::rekey::LOCATION.iter().find(|a| {
        before.attribute(a) != after.attribute(a)
            || (**a == "BASE_PATH" && before.base_path != after.base_path)
    }) {
        return Err(input(format!(
            "{}: RESTIC_PASSWORD and {moved} both change: change the password and where the repositories are in two updates",
            f.name
        )));
    }
    // A run going on holds the old password for its whole length (and may make a repository
    // with it): the change waits for it. Runs that start later are refused until the change
    // is complete (engine::start_run).
    let now = jiff::Timestamp::now().as_second();
    if let Some((kind, job)) = st.live_runs(now)?.into_iter().next() {
        return Err(Error::Refused(format!(
            "a {} run of job {job} is going on; change the password when it has ended",
            kind.as_str()
        )));
    }
    st.begin_rekey(id, &text, now)?;
    Ok(DatastoreUpdated::Rekeyed(crate::rekey::complete(
        env, st, id,
    )?))
}

/// What giving up a password change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeyAborted {
    pub datastore: u64,
    pub keys_removed: usize,
    /// Repositories that could not be opened to remove the abandoned password's keys.
    pub unchecked: Vec<String>,
}

impl fmt::Display for RekeyAborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "datastore {}: the password change was given up ({} keys for the abandoned password removed); its template keeps the old password",
            self.datastore, self.keys_removed
        )?;
        if !self.unchecked.is_empty() {
            write!(
                f,
                "\nnot checked (they may keep a key for the abandoned password): {}",
                self.unchecked.join("; ")
            )?;
        }
        Ok(())
    }
}

/// Gives up datastore `id`'s unfinished password change (one that has not switched the
/// template yet; see docs/rekey.md).
pub fn abort_rekey(
    env: &crate::runner::Env,
    st: &mut State,
    id: u64,
) -> Result<RekeyAborted, Error> {
    let (keys_removed, unchecked) = crate::rekey::abort(env, st, id)?;
    Ok(RekeyAborted {
        datastore: id,
        keys_removed,
        unchecked,
    })
}

/// The backup jobs that name datastore `id`.
pub fn jobs_using(st: &State, id: u64) -> Result<Vec<u64>, Error> {
    Ok(st
        .jobs()?
        .into_iter()
        .filter(|j| JobTemplate::parse(&j.template).is_ok_and(|j| j.datastore_id == id))
        .map(|j| j.id)
        .collect())
}

/// Deletes a datastore no job names and no backup image lives in (the repository stays).
pub fn delete_datastore(st: &mut State, id: u64) -> Result<(), Error> {
    let using = jobs_using(st, id)?;
    st.delete_datastore(id, &using)?;
    Ok(())
}

/// A remote's template checked as a datastore's, with the id it has or will get; its name.
fn remote_name(location: &str, id: u64, f: &FileText) -> Result<String, Error> {
    checked_datastore(location, id, f)
}

/// A datastore's (or remote's) template checked as it is stored: its attribute names (a typo
/// names the attribute it was meant to be) and every setting's value and range, as the
/// actions will read them; its name.
fn checked_datastore(location: &str, id: u64, f: &FileText) -> Result<String, Error> {
    let t = Template::parse(&f.text).map_err(|x| input(format!("{}: template: {x}", f.name)))?;
    crate::names::check(&t, backstop_datastore::settings::ATTRIBUTES, "datastore")
        .map_err(|x| input(format!("{}: {x}", f.name)))?;
    let (name, ds) =
        model::datastore(id, &f.text, location).map_err(|x| input(format!("{}: {x}", f.name)))?;
    let root = backstop_protocol::xml::Element::parse(&ds.document)
        .map_err(|x| input(format!("{}: {x}", f.name)))?;
    let parsed = backstop_protocol::message::Datastore::from_xml(&root)
        .map_err(|x| input(format!("{}: {x}", f.name)))?;
    backstop_datastore::settings::Settings::of(&parsed)
        .map_err(|x| input(format!("{}: {}", f.name, x.message)))?;
    Ok(name)
}

pub fn create_remote(st: &mut State, location: &str, f: &FileText) -> Result<Created, Error> {
    let name = remote_name(location, 0, f)?;
    let id = st.add_remote(&name, &f.text)?;
    Ok(Created { id })
}

pub fn update_remote(st: &mut State, location: &str, id: u64, f: &FileText) -> Result<(), Error> {
    let name = remote_name(location, id, f)?;
    st.update_remote(id, &name, &f.text)?;
    Ok(())
}

/// Where a remote's repositories are: a path, `sftp:user@server:path` or `s3:endpoint/bucket`.
pub fn remote_location(location: &str, id: u64, text: &str) -> Result<String, Error> {
    let (_, ds) =
        model::datastore(id, text, location).map_err(|x| input(format!("remote {id}: {x}")))?;
    let root = backstop_protocol::xml::Element::parse(&ds.document)
        .map_err(|x| input(format!("remote {id}: {x}")))?;
    let parsed = backstop_protocol::message::Datastore::from_xml(&root)
        .map_err(|x| input(format!("remote {id}: {x}")))?;
    use backstop_datastore::location::Location;
    Ok(
        match Location::of(&parsed).map_err(|x| input(format!("remote {id}: {x}")))? {
            Location::Local { base_path } => base_path,
            Location::Sftp {
                user,
                server,
                base_path,
            } => format!("sftp:{user}@{server}:{base_path}"),
            Location::S3 { endpoint, bucket } => format!("s3:{endpoint}/{bucket}"),
        },
    )
}

/// Registers a VM from its XML document (`onevm show -x`).
pub fn register_vm(st: &mut State, f: &FileText) -> Result<Created, Error> {
    let root = backstop_protocol::xml::Element::parse(&f.text)
        .map_err(|x| input(format!("{}: {x}", f.name)))?;
    let vm = backstop_protocol::message::Vm::from_xml(&root)
        .map_err(|x| input(format!("{}: {x}", f.name)))?;
    let host = vm.placement.as_ref().map(|p| p.hostname.clone());
    st.register_vm(vm.id, &vm.name, host.as_deref(), &f.text)?;
    Ok(Created { id: vm.id })
}

/// A sync job's template that parses and names a backup datastore and a remote of this state.
fn checked_sync(st: &State, what: &str, text: &str) -> Result<SyncTemplate, Error> {
    let job = SyncTemplate::parse(text).map_err(|x| input(format!("{what}: {x}")))?;
    if !st.datastores()?.iter().any(|d| d.id == job.datastore_id) {
        return Err(input(format!(
            "{what}: DATASTORE_ID {} is not a backup datastore",
            job.datastore_id
        )));
    }
    if !st.remotes()?.iter().any(|r| r.id == job.remote_id) {
        return Err(input(format!(
            "{what}: REMOTE_ID {} is not a remote",
            job.remote_id
        )));
    }
    Ok(job)
}

pub fn create_sync_job(st: &mut State, d: &Definition) -> Result<Created, Error> {
    let Resolved { text, what } = resolve(d, "")?;
    let job = checked_sync(st, &what, &text)?;
    let id = st.add_sync_job(&job.name, &text)?;
    Ok(Created { id })
}

/// Replaces a sync job's template, or changes the attributes the settings name; its run
/// records stay.
pub fn update_sync_job(st: &mut State, id: u64, d: &Definition) -> Result<(), Error> {
    let crate::state::Named {
        template: stored, ..
    } = st
        .sync_jobs()?
        .into_iter()
        .find(|j| j.id == id)
        .ok_or_else(|| input(format!("there is no sync job {id}")))?;
    let Resolved { text, what } = resolve(d, &stored)?;
    let job = checked_sync(st, &what, &text)?;
    st.update_sync_job(id, &job.name, &text)?;
    Ok(())
}

/// A verify job's template that parses and names a backup datastore of this state.
fn checked_verify(st: &State, what: &str, text: &str) -> Result<VerifyTemplate, Error> {
    let job = VerifyTemplate::parse(text).map_err(|x| input(format!("{what}: {x}")))?;
    if !st.datastores()?.iter().any(|d| d.id == job.datastore_id) {
        return Err(input(format!(
            "{what}: DATASTORE_ID {} is not a backup datastore",
            job.datastore_id
        )));
    }
    Ok(job)
}

pub fn create_verify_job(st: &mut State, d: &Definition) -> Result<Created, Error> {
    let Resolved { text, what } = resolve(d, "")?;
    let job = checked_verify(st, &what, &text)?;
    let id = st.add_verify_job(&job.name, &text)?;
    Ok(Created { id })
}

/// Replaces a verify job's template, or changes the attributes the settings name; its
/// verdicts stay.
pub fn update_verify_job(st: &mut State, id: u64, d: &Definition) -> Result<(), Error> {
    let crate::state::VerifyJobRow {
        template: stored, ..
    } = st
        .verify_jobs()?
        .into_iter()
        .find(|j| j.id == id)
        .ok_or_else(|| input(format!("there is no verify job {id}")))?;
    let Resolved { text, what } = resolve(d, &stored)?;
    let job = checked_verify(st, &what, &text)?;
    st.update_verify_job(id, &job.name, &text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_replace_attributes_in_any_case_and_every_and_schedule_exclude_each_other() {
        let text = "name=\"a\"\nEVERY=\"1h\"\nVMS=\"1\"\n";
        let out = with_settings(
            text,
            "t",
            &[
                Setting::new("NAME", Some("b".into())),
                Setting::new("SCHEDULE", Some("daily".into())),
                Setting::new("VMS", Some(String::new())),
                Setting::new("TAGS", None),
            ],
        )
        .expect("flags");
        let t = Template::parse(&out).expect("parse");
        assert_eq!(t.get("NAME"), Some("b"));
        assert_eq!(t.get("SCHEDULE"), Some("daily"));
        assert_eq!(t.get("EVERY"), None);
        assert_eq!(t.get("VMS"), None);
        assert_eq!(t.attributes.len(), 2, "{out}");
        assert_eq!(
            with_settings(text, "t", &[Setting::new("TAGS", None)]).expect("same"),
            text
        );
    }
}
