//! What the JSON API and `/metrics` say (docs/web.md, "JSON and metrics"): renderings of a
//! [`Snapshot`], with the scheduler's health and the overdue work of [`crate::overdue`].

use crate::model::Snapshot;
use serde_json::{Value, json};

impl Snapshot {
    /// `/api/status`: what a monitoring system polls.
    pub fn status(&self) -> Value {
        let mut counts = serde_json::Map::new();
        for s in ["OUTDATED", "ONGOING", "UPDATED", "ERROR"] {
            let n = self.vms.iter().filter(|v| v.state == Some(s)).count();
            counts.insert(s.to_string(), json!(n));
        }
        let never = self.vms.iter().filter(|v| v.last_backup.is_none()).count();
        let ages: Vec<Value> = self
            .vms
            .iter()
            .map(|v| {
                json!({"vm": v.id, "name": v.name, "last_backup": v.last_backup,
                    "age_seconds": v.last_backup.map(|t| self.now - t)})
            })
            .collect();
        let oldest = self
            .vms
            .iter()
            .filter_map(|v| v.last_backup.map(|t| (v.id, self.now - t)))
            .max_by_key(|(_, age)| *age);
        let failing: Vec<Value> = self
            .vms
            .iter()
            .filter(|v| v.state == Some("ERROR"))
            .map(|v| {
                json!({"vm": v.id, "name": v.name, "job": v.job, "reason": v.reason,
                "failures": v.failures})
            })
            .collect();
        let running: Vec<Value> = self
            .vms
            .iter()
            .filter(|v| v.state == Some("ONGOING"))
            .map(|v| {
                json!({"vm": v.id, "name": v.name, "job": v.job,
                "started_at": v.started_at_ms.map(|t| t / 1000),
                "progress": v.progress.map(|(done, total, read, at)| json!({
                    "done": done, "total": total, "bytes_read": read, "at": at / 1000,
                    "percent": (done * 100).checked_div(total)}))})
            })
            .collect();
        let health = crate::overdue::Health::of(self.scheduler.as_ref(), self.now);
        let scheduler = json!({
            "state": health.word(),
            "running": health.running(),
            "says": health.describe(self.now),
            "pid": self.scheduler.map(|b| b.pid),
            "alive_at": self.scheduler.map(|b| b.alive_at),
            "in_pass_since": self.scheduler.and_then(|b| b.pass_started_at),
            "last_pass": self.scheduler.and_then(|b| b.last_pass_at),
            "interval_seconds": self.scheduler.map(|b| b.interval),
            "stopped_at": self.scheduler.and_then(|b| b.stopped_at),
        });
        let overdue: Vec<Value> = crate::overdue::overdue(self)
            .iter()
            .map(|o| {
                json!({"kind": o.kind, "id": o.id, "name": o.name, "due_since": o.due_since,
                    "late_seconds": o.late_by(self.now), "why": o.why})
            })
            .collect();
        json!({
            "time": self.now,
            "scheduler": scheduler,
            "overdue": overdue,
            "vms": {"total": self.vms.len(), "by_state": counts, "never_backed_up": never},
            "oldest_backup": oldest.map(|(vm, age)| json!({"vm": vm, "age_seconds": age})),
            "last_backup_per_vm": ages,
            "failing": failing,
            "running": running,
            "jobs": self.jobs.len(),
            "images": self.images.len(),
            "failing_copies": self.second_copies.iter().filter(|c| c.problem.is_some())
                .map(|c| json!({"kind": c.kind, "id": c.id, "name": c.name,
                    "last_run": c.last_run, "problem": c.problem}))
                .collect::<Vec<_>>(),
        })
    }

    pub fn jobs_json(&self) -> Value {
        Value::Array(
            self.jobs
                .iter()
                .map(|j| {
                    json!({"id": j.id, "name": j.name, "priority": j.priority,
                    "locked": j.locked, "mode": j.mode, "datastore": j.datastore_id,
                    "vms": j.vms, "last_run": j.last_run, "last_duration": j.last_duration,
                    "next_run": j.next_run, "keep": j.keep})
                })
                .collect(),
        )
    }

    pub fn vms_json(&self) -> Value {
        Value::Array(
            self.vms
                .iter()
                .map(|v| {
                    json!({"id": v.id, "name": v.name, "host": v.host, "job": v.job,
                    "state": v.state, "reason": v.reason, "failures": v.failures,
                    "started_at": v.started_at_ms.map(|t| t / 1000),
                    "ended_at": v.ended_at_ms.map(|t| t / 1000),
                    "last_backup": v.last_backup})
                })
                .collect(),
        )
    }

    pub fn images_json(&self) -> Value {
        Value::Array(
            self.images
                .iter()
                .map(|i| {
                    let incs: Vec<Value> = i
                        .increments
                        .iter()
                        .map(|n| {
                            json!({"id": n.id, "type": n.kind,
                            "source": (!n.source.is_empty()).then_some(&n.source),
                            "size_mb": n.size_mb, "date": n.date,
                            "verified_at": n.verified.map(|v| v.0),
                            "verified_ok": n.verified.map(|v| v.1)})
                        })
                        .collect();
                    json!({"id": i.id, "vm": i.vm, "job": i.job, "datastore": i.datastore,
                    "protected": i.protected, "increments": incs})
                })
                .collect(),
        )
    }

    pub fn runs_json(&self) -> Value {
        Value::Array(
            self.runs
                .iter()
                .map(|r| {
                    json!({"kind": r.kind, "what": r.what, "started": r.started,
                    "ended": r.ended, "ok": r.ok, "detail": r.detail})
                })
                .collect(),
        )
    }

    /// `/metrics` in the Prometheus text format.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, help: &str, kind: &str, samples: Vec<(String, f64)>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in samples {
                out.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        metric(
            "backstop_vms",
            "VMs of backup jobs by state.",
            "gauge",
            ["OUTDATED", "ONGOING", "UPDATED", "ERROR"]
                .iter()
                .map(|s| {
                    (
                        format!("{{state=\"{s}\"}}"),
                        self.vms.iter().filter(|v| v.state == Some(*s)).count() as f64,
                    )
                })
                .collect(),
        );
        metric(
            "backstop_vm_last_backup_timestamp_seconds",
            "When each VM's newest backup point was taken.",
            "gauge",
            self.vms
                .iter()
                .filter_map(|v| {
                    v.last_backup
                        .map(|t| (format!("{{vm=\"{}\"}}", v.id), t as f64))
                })
                .collect(),
        );
        metric(
            "backstop_vm_backup_failures",
            "Consecutive failed backups of each VM.",
            "gauge",
            self.vms
                .iter()
                .map(|v| (format!("{{vm=\"{}\"}}", v.id), f64::from(v.failures)))
                .collect(),
        );
        metric(
            "backstop_images",
            "Backup images recorded.",
            "gauge",
            vec![(String::new(), self.images.len() as f64)],
        );
        metric(
            "backstop_stored_megabytes",
            "Sizes of the recorded backup points, summed per datastore, in MiB (OpenNebula's MB).",
            "gauge",
            self.datastores
                .iter()
                .map(|(id, _)| {
                    let mb: u64 = self
                        .images
                        .iter()
                        .filter(|i| i.datastore == *id)
                        .map(|i| i.stored_mb)
                        .sum();
                    (format!("{{datastore=\"{id}\"}}"), mb as f64)
                })
                .collect(),
        );
        let health = crate::overdue::Health::of(self.scheduler.as_ref(), self.now);
        metric(
            "backstop_scheduler_up",
            "1 when the scheduler daemon passed within three of its intervals and a minute.",
            "gauge",
            vec![(String::new(), if health.running() { 1.0 } else { 0.0 })],
        );
        metric(
            "backstop_scheduler_last_pass_timestamp_seconds",
            "When the scheduler daemon last passed over the jobs.",
            "gauge",
            self.scheduler
                .and_then(|b| b.last_pass_at)
                .map(|t| (String::new(), t as f64))
                .into_iter()
                .collect(),
        );
        metric(
            "backstop_job_overdue_seconds",
            "How long each late job's run is overdue (only jobs that are late).",
            "gauge",
            crate::overdue::overdue(self)
                .iter()
                .map(|o| {
                    (
                        format!("{{kind=\"{}\",job=\"{}\"}}", o.kind, o.id),
                        o.late_by(self.now) as f64,
                    )
                })
                .collect(),
        );
        metric(
            "backstop_job_last_run_timestamp_seconds",
            "When each backup job's last run started.",
            "gauge",
            self.jobs
                .iter()
                .filter_map(|j| {
                    j.last_run
                        .map(|t| (format!("{{job=\"{}\"}}", j.id), t as f64))
                })
                .collect(),
        );
        out
    }
}
