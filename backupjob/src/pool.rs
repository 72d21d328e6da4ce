//! The work pool the sync and verify jobs share: repositories worked on a few at a time on
//! threads of their own, a progress line about every second, and how a run reports.

use std::sync::atomic::Ordering;

/// How a run reports: a line per repository (`done`), and a progress line about every second
/// while a repository is copied (`progress`, from another thread).
pub struct Report<'a> {
    pub done: &'a mut dyn FnMut(&str),
    pub progress: &'a (dyn Fn(&str) + Sync),
}

impl std::fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Report")
    }
}

/// The repositories being worked on at once, each with its progress counters.
pub struct Running<P>(std::sync::Mutex<Vec<(String, std::sync::Arc<P>)>>);

impl<P> std::fmt::Debug for Running<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Running")
    }
}

impl<P> Default for Running<P> {
    fn default() -> Self {
        Running(std::sync::Mutex::new(Vec::new()))
    }
}

impl<P> Running<P> {
    /// Runs `work` on repository `name`, listed as running with `counters` meanwhile.
    pub fn track<T>(&self, name: &str, counters: std::sync::Arc<P>, work: impl FnOnce() -> T) -> T {
        if let Ok(mut r) = self.0.lock() {
            r.push((name.to_string(), counters));
        }
        let out = work();
        if let Ok(mut r) = self.0.lock() {
            r.retain(|(n, _)| n != name);
        }
        out
    }

    /// Reports one progress line naming each running repository (`part` says one), if any.
    pub fn line(&self, report: impl Fn(&str), part: impl Fn(&str, &P) -> String) {
        let now = self.0.lock().map(|r| r.clone()).unwrap_or_default();
        let parts: Vec<String> = now.iter().map(|(name, p)| part(name, p)).collect();
        if !parts.is_empty() {
            report(&parts.join("; "));
        }
    }
}

/// Runs `work` on each of `items`, `at_once` at a time on threads of their own, and calls
/// `done` on this thread as each ends; the outcomes come back in the items' order (a panic
/// in `work` is the caller's panic once the other workers end).
pub fn each_at_once<I: Sync, T: Send>(
    at_once: usize,
    items: &[I],
    work: impl Fn(&I) -> T + Sync,
    mut done: impl FnMut(usize, &T),
) -> Vec<Option<T>> {
    use std::sync::atomic::AtomicUsize;
    let next = AtomicUsize::new(0);
    let mut outcomes: Vec<Option<T>> = items.iter().map(|_| None).collect();
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..at_once.clamp(1, items.len().max(1)) {
            let tx = tx.clone();
            let (next, work) = (&next, &work);
            s.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(item) = items.get(i) else {
                        break;
                    };
                    if tx.send((i, work(item))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for (i, outcome) in rx {
            done(i, &outcome);
            outcomes[i] = Some(outcome);
        }
    });
    outcomes
}

/// Runs `work`, calling `tick` about every second from another thread while it runs.
pub fn with_ticks<T>(tick: impl Fn() + Sync, work: impl FnOnce() -> T) -> T {
    use std::sync::atomic::AtomicBool;
    let finished = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut waited = 0u32;
            while !finished.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(100));
                waited += 1;
                if waited.is_multiple_of(10) {
                    tick();
                }
            }
        });
        // Set on the way out, however `work` ends, so the ticker always stops.
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _done = Done(&finished);
        work()
    })
}
