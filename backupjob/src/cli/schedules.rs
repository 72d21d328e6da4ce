//! `backupjob sched-add|sched-update|sched-delete` and `scheduler`: scheduled actions, and
//! the daemon that runs due jobs.

use super::{Args, input, print, read};
use super::{Reporter, SchedAddArgs, SchedUpdateArgs};
use crate::Error;
use crate::engine;
use crate::runner::Env;
use crate::scheduler::Limits;
use crate::state::State;

pub(super) fn add(st: &mut State, a: &SchedAddArgs) -> Result<(), Error> {
    let SchedAddArgs {
        id,
        time,
        repeat,
        days,
        end_type,
        end_value,
    } = a;
    if !st.jobs()?.iter().any(|j| j.id == *id) {
        return Err(input(format!("there is no backup job {id}")));
    }
    let epoch = parse_time(time)?;
    let repeat = parse_repeat(repeat)?;
    let sa = crate::schedule::SchedAction::new(epoch, repeat, days, *end_type, *end_value)
        .map_err(|x| input(x.to_string()))?;
    let sid = st.add_sched_action(*id, &sa)?;
    print(&format!("ID: {sid}"))?;
    Ok(())
}

pub(super) fn daemon(
    st: &mut State,
    args: &Args,
    forever: &bool,
    interval: &u64,
) -> Result<(), Error> {
    let env = Env {
        remotes: args.remotes.clone(),
        datastore_location: args.datastore_location.clone(),
    };
    let limits = Limits {
        max_backups: args.max_backups,
        max_backups_host: args.max_backups_host,
        ..Limits::default()
    };
    let tz = jiff::tz::TimeZone::system();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone());
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone());
    let mut reporter = Reporter::new(args.progress_every);
    let notify = super::notify_settings();
    loop {
        let since = jiff::Timestamp::now().as_millisecond();
        let pass = engine::scheduler_pass(&env, st, &limits, &tz, |job, ev| {
            reporter.event(&format!("job {job}: "), ev);
        })?;
        let ran = pass.ran;
        for (job, why) in &pass.missed {
            print(&format!(
                "scheduler: backup job {job} missed its schedule: {why}"
            ))?;
            for line in crate::notify::after_missed(st, &notify, *job, why) {
                print(&format!("scheduler: backup job {job}: {line}"))?;
            }
        }
        if !ran.is_empty() {
            let list: Vec<String> = ran.iter().map(u64::to_string).collect();
            print(&format!("scheduler: ran backup jobs {}", list.join(", ")))?;
        }
        for job in &ran {
            for line in crate::notify::after_job_run(st, &notify, *job, since) {
                print(&format!("scheduler: backup job {job}: {line}"))?;
            }
            for line in super::retention::after_run(st, &env, *job) {
                print(&format!("scheduler: backup job {job}: {line}"))?;
            }
        }
        // Then the sync and verify jobs whose EVERY or SCHEDULE has come round.
        let cfg = backstop_datastore::config::DriverConfig::load(&args.remotes)?;
        let now = jiff::Timestamp::now().as_second();
        for line in crate::scheduled::scheduled_pass(
            st,
            &args.datastore_location,
            &cfg,
            (now, &tz, &notify),
        )? {
            print(&format!("scheduler: {line}"))?;
        }
        if !*forever {
            break;
        }
        // Sleep in small steps so SIGTERM is honoured quickly (between jobs, never
        // in the middle of one).
        let until = std::time::Instant::now() + std::time::Duration::from_secs(*interval);
        while std::time::Instant::now() < until && !stop.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            print("scheduler: stopped")?;
            break;
        }
    }
    Ok(())
}

pub(super) fn update(st: &mut State, u: &SchedUpdateArgs) -> Result<(), Error> {
    let SchedUpdateArgs {
        id,
        sched_id,
        file,
        time,
        repeat,
        days,
        end_type,
        end_value,
    } = u;
    // A file's SCHED_ACTION gives the values the flags do not.
    let (mut time, mut repeat, mut days, mut end_type, mut end_value) = (
        time.clone(),
        repeat.clone(),
        days.clone(),
        *end_type,
        *end_value,
    );
    if let Some(f) = file {
        use backstop_protocol::template::{Template, Value, vector_get};
        let t = Template::parse(&read(f)?)
            .map_err(|x| input(format!("{}: template: {x}", f.display())))?;
        let pairs = t
            .attributes
            .iter()
            .find_map(|a| match &a.value {
                Value::Vector(p) if a.name == "SCHED_ACTION" => Some(p.clone()),
                _ => None,
            })
            .ok_or_else(|| input(format!("{}: no SCHED_ACTION = [...] in it", f.display())))?;
        let get = |k: &str| vector_get(&pairs, k).map(str::to_string);
        let num = |k: &str| -> Result<Option<i64>, Error> {
            get(k)
                .map(|v| {
                    v.trim().parse().map_err(|_| {
                        input(format!(
                            "{}: SCHED_ACTION: {k} is {v:?}, not a number",
                            f.display()
                        ))
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
    let (time, repeat, days, end_type, end_value) = (&time, &repeat, &days, &end_type, &end_value);
    let crate::state::SchedActionRow { action: old, .. } = st
        .sched_actions(*id)?
        .into_iter()
        .find(|s| s.id == *sched_id)
        .ok_or_else(|| {
            input(format!(
                "backup job {id} has no scheduled action {sched_id}"
            ))
        })?;
    let (old_type, old_value) = old.end.codes();
    let old_repeat = old.repeat.code();
    let old_days: Vec<String> = old.days.iter().map(u32::to_string).collect();
    let time = match time {
        Some(t) => parse_time(t)?,
        None => old.time,
    };
    let repeat = match repeat {
        Some(r) => parse_repeat(r)?,
        None => old_repeat,
    };
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
    st.update_sched_action(*sched_id, &sa, None)?;
    Ok(())
}

/// `--time`: an epoch, or a local date and time.
fn parse_time(time: &str) -> Result<i64, Error> {
    if let Ok(t) = time.parse::<i64>() {
        return Ok(t);
    }
    time.parse::<jiff::civil::DateTime>()
        .ok()
        .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::system()).ok())
        .map(|z| z.timestamp().as_second())
        .ok_or_else(|| {
            input(format!(
                "--time {time:?} is neither an epoch nor a local date and time"
            ))
        })
}

/// `--repeat`: -1..3 or its name.
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
