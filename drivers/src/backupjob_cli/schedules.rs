//! `backupjob sched-add|sched-update|sched-delete` and `scheduler`: scheduled actions, and
//! the daemon that runs due jobs.

use super::{Args, file_text, print};
use super::{Reporter, SchedAddArgs, SchedUpdateArgs};
use backstop_backupjob::Error;
use backstop_backupjob::ops::{
    self,
    definitions::{SchedAdd, SchedUpdate},
    runs::PassOptions,
};
use backstop_backupjob::state::State;

pub(super) fn add(st: &mut State, a: &SchedAddArgs) -> Result<(), Error> {
    let SchedAddArgs {
        id,
        time,
        repeat,
        days,
        end_type,
        end_value,
    } = a;
    let add = SchedAdd {
        job: *id,
        time: time.clone(),
        repeat: repeat.clone(),
        days: days.clone(),
        end_type: *end_type,
        end_value: *end_value,
    };
    print(&ops::definitions::add_sched_action(st, &add)?.to_string())
}

pub(super) fn daemon(
    st: &mut State,
    args: &Args,
    forever: &bool,
    interval: &u64,
) -> Result<(), Error> {
    let env = super::env(args);
    crate::install::warn_if_overwritten(&args.remotes, "backupjob scheduler");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone());
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone());
    let mut reporter = Reporter::new(args.progress_every);
    let options = PassOptions {
        limits: super::limits(args),
        notify: super::notify_settings(),
        tz: jiff::tz::TimeZone::system(),
    };
    // The heartbeat the dashboard reads (docs/web.md, "Overdue work"): the daemon's start,
    // each pass, and a clean stop.
    let mut beat = backstop_backupjob::state::SchedulerBeat {
        pid: std::process::id(),
        started_at: jiff::Timestamp::now().as_second(),
        last_pass_at: 0,
        interval: *interval,
        max_backups: args.max_backups,
        max_backups_host: args.max_backups_host,
        stopped_at: None,
    };
    loop {
        let pass = ops::runs::scheduler_pass(
            &env,
            st,
            &options,
            |job, ev| reporter.event(&format!("job {job}: "), ev),
            print,
        );
        beat.last_pass_at = jiff::Timestamp::now().as_second();
        if let Err(e) = st.record_scheduler_pass(&beat) {
            print(&format!("scheduler: cannot record its pass: {e}"))?;
        }
        pass?;
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
            let _ = st.record_scheduler_stop(beat.pid, jiff::Timestamp::now().as_second());
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
    let update = SchedUpdate {
        job: *id,
        sched: *sched_id,
        file: file.as_deref().map(file_text).transpose()?,
        time: time.clone(),
        repeat: repeat.clone(),
        days: days.clone(),
        end_type: *end_type,
        end_value: *end_value,
    };
    ops::definitions::update_sched_action(st, &update)
}
