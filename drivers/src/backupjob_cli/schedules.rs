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
    // each pass's start and end, a clean stop, and, from a thread of its own, "alive" every
    // few seconds, as one pass can run backups for hours.
    let pid = std::process::id();
    let now = || jiff::Timestamp::now().as_second();
    st.scheduler_started(
        &backstop_backupjob::state::SchedulerStart {
            pid,
            interval: *interval,
            max_backups: args.max_backups,
            max_backups_host: args.max_backups_host,
        },
        now(),
    )?;
    let _alive = Heartbeat::start(super::state_path(args)?, pid, *interval);
    loop {
        let _ = st.scheduler_pass_starts(pid, now());
        let pass = ops::runs::scheduler_pass(
            &env,
            st,
            &options,
            |job, ev| reporter.event(&format!("job {job}: "), ev),
            print,
        );
        if let Err(e) = st.scheduler_pass_ends(pid, now()) {
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
            let _ = st.scheduler_stopped(pid, now());
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

/// A thread that says the scheduler is alive every few seconds, on a connection of its own,
/// until dropped.
struct Heartbeat {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    fn start(path: std::path::PathBuf, pid: u32, interval: u64) -> Heartbeat {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        // Well inside the three intervals (and a minute) after which it counts as down.
        let every = std::time::Duration::from_secs(interval.clamp(1, 10));
        let thread = std::thread::Builder::new()
            .name("scheduler heartbeat".into())
            .spawn(move || {
                let Ok(st) = State::open(&path) else { return };
                let mut next = std::time::Instant::now() + every;
                while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    if std::time::Instant::now() >= next {
                        let _ = st.scheduler_alive(pid, jiff::Timestamp::now().as_second());
                        next = std::time::Instant::now() + every;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            })
            .ok();
        Heartbeat { stop, thread }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
