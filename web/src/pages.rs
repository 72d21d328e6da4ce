//! The server-rendered pages. Every text from the state is escaped; the only script turns the
//! `<time>` elements (UTC) into the viewer's local time.

use crate::model::{Image, Snapshot, Vm};

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A moment: UTC in the page, the viewer's local time once the script has run.
fn when(t: Option<i64>) -> String {
    match t.and_then(|t| jiff::Timestamp::from_second(t).ok()) {
        None => "—".into(),
        Some(ts) => format!(
            "<time datetime=\"{ts}\">{}</time>",
            ts.strftime("%Y-%m-%d %H:%M UTC")
        ),
    }
}

/// MB as oned counts them, shown in binary units.
pub fn size(mb: u64) -> String {
    match mb {
        m if m >= 1024 * 1024 => format!("{:.1} TiB", m as f64 / 1_048_576.0),
        m if m >= 1024 => format!("{:.1} GiB", m as f64 / 1024.0),
        m => format!("{m} MiB"),
    }
}

fn ago(now: i64, t: Option<i64>) -> String {
    let Some(t) = t else { return "never".into() };
    let s = (now - t).max(0);
    match s {
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s if s < 172_800 => format!("{} h ago", s / 3600),
        s => format!("{} days ago", s / 86_400),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#222}\
header{background:#1d3557;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:center}\
header a{color:#fff;text-decoration:none}main{padding:1em 1.5em}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:left}\
.ERROR,.bad{color:#b00020;font-weight:bold}.ONGOING{color:#0b5394;font-weight:bold}.UPDATED,.ok{color:#2e7d32}\
.OUTDATED,.late{color:#b26a00}.empty{color:#666;font-style:italic}form.inline{display:inline}\
#actions{margin:.5em 0 1em}a.button{margin-left:.5em}figure{margin:1em 0}\
figcaption{color:#444;font-size:.9em}.axis{stroke:#999}.tick{font-size:10px;fill:#666}\
.series{fill:none;stroke:#1d3557;stroke-width:2}.run-ok{fill:#2e7d32}.run-failed{fill:#b00020}\
.day-backed-up{fill:#2e7d32}.day-failed{fill:#b00020}.day-no-run{fill:#ddd}";

const SCRIPT: &str = "document.querySelectorAll('time').forEach(function(t){\
var d=new Date(t.getAttribute('datetime'));if(!isNaN(d)){t.textContent=d.toLocaleString();}});";

/// The scheduler daemon's health, as every page shows it under its header.
pub fn scheduler_line(snap: &Snapshot) -> String {
    let health = crate::overdue::Health::of(snap.scheduler.as_ref(), snap.now);
    let class = if health.running() { "ok" } else { "bad" };
    format!(
        "<p id=\"scheduler\" class=\"{class}\" data-state=\"{}\">{}</p>",
        health.word(),
        esc(&health.describe(snap.now))
    )
}

/// A whole page; `logout` carries the session's CSRF token when someone is logged in;
/// `status` is a line shown on top of every page (the scheduler's health), when known.
pub fn page(title: &str, body: &str, logout: Option<&str>, status: Option<&str>) -> String {
    let out = logout.map_or(String::new(), |csrf| {
        format!(
            "<form class=\"inline\" method=\"post\" action=\"/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>Log out</button></form>",
            esc(csrf)
        )
    });
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{} · backstop</title><style>{STYLE}</style></head><body>\
         <header><strong>backstop</strong><a href=\"/\">Overview</a><a href=\"/jobs\">Jobs</a>\
         <a href=\"/vms\">VMs</a><a href=\"/datastores\">Datastores</a>\
         <a href=\"/sync-jobs\">Sync</a><a href=\"/verify-jobs\">Verify</a><a href=\"/runs\">Runs</a>\
         <span style=\"flex:1\"></span>{out}</header><main>{}<h1>{}</h1>{body}</main>\
         <script>{SCRIPT}</script></body></html>",
        esc(title),
        status.unwrap_or_default(),
        esc(title)
    )
}

/// The page shown when the state cannot be read (`reason`): most often there is none yet.
pub fn no_state(reason: &str) -> String {
    format!(
        "<p class=\"bad\" id=\"no-state\">{}</p>\
         <p>backstop serve shows the state of the backup-job runner. A state is made by the first \
         <code>backstop backupjob</code> command that writes one (<code>datastore create</code>, \
         <code>vm register</code>, <code>create</code>), or by the scheduler. If the runner keeps \
         its state elsewhere, start <code>backstop serve</code> with the same \
         <code>--state FILE</code> (or <code>BACKSTOP_STATE</code>) as the runner.</p>",
        esc(reason)
    )
}

fn job_buttons(id: u64, csrf: &str) -> String {
    let button = |action: &str, label: &str| {
        format!(
            "<form class=\"inline action\" method=\"post\" action=\"/jobs/{id}/{action}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button name=\"do\" value=\"{action}\">{label}</button></form> ",
            esc(csrf)
        )
    };
    format!(
        "<div id=\"actions\">{}{}{}<a class=\"button\" href=\"/jobs/{id}/retention\">Apply the retention plan…</a></div>",
        button("run", "Run now"),
        button("retry", "Retry VMs in ERROR"),
        button("cancel", "Cancel the run"),
    )
}

/// The confirmation of a retention plan: every point it deletes, named, and the form that
/// deletes exactly those.
pub fn confirm_retention(
    plan: &backstop_backupjob::ops::retention::RetentionPlan,
    csrf: &str,
) -> String {
    let going = plan.going();
    let rules = if plan.rules.is_empty() {
        "no keep rule".to_string()
    } else {
        plan.rules.join(" ")
    };
    if going.is_empty() {
        return format!(
            "<p id=\"nothing\" class=\"ok\">With {}, the plan deletes nothing now.</p>\
             <p><a href=\"/jobs/{}\">Back to backup job {}</a></p>",
            esc(&rules),
            plan.job,
            plan.job
        );
    }
    let mut body = format!(
        "<p>With {}, applying the plan deletes these {} backup points; the others stay. \
         Deleted points cannot be brought back.</p><ul id=\"going\">",
        esc(&rules),
        going.len()
    );
    for g in &going {
        body.push_str(&format!("<li>{}</li>", esc(g)));
    }
    body.push_str(&format!(
        "</ul><form method=\"post\" action=\"/jobs/{}/retention\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input type=\"hidden\" name=\"plan\" value=\"{}\">\
         <button id=\"confirm\">Delete these {} points</button></form>\
         <p><a href=\"/jobs/{}\">Cancel: back to backup job {}</a></p>",
        plan.job,
        esc(csrf),
        esc(&plan.going_digest()),
        going.len(),
        plan.job,
        plan.job
    ));
    body
}

/// What a page's action said.
pub fn action_result(job: u64, said: &str, ok: bool) -> String {
    format!(
        "<pre id=\"result\" class=\"{}\">{}</pre><p><a href=\"/jobs/{job}\">Back to backup job {job}</a></p>",
        if ok { "ok" } else { "bad" },
        esc(said.trim_end())
    )
}

/// Charts are SVG drawn here: no script, no build chain. Width and height of their area.
const CHART_W: f64 = 640.0;
const CHART_H: f64 = 160.0;
const PAD: f64 = 28.0;

fn day_label(day: i64) -> String {
    jiff::Timestamp::from_second(day)
        .map_or(day.to_string(), |t| t.strftime("%Y-%m-%d").to_string())
}

/// A datastore's stored size over the last days: a line, a vertex a day.
fn stored_chart(days: &[(i64, u64)]) -> String {
    let (Some(first), Some(last)) = (days.first(), days.last()) else {
        return String::new();
    };
    let top = days.iter().map(|d| d.1).max().unwrap_or(0).max(1) as f64;
    let step = (CHART_W - 2.0 * PAD) / (days.len().max(2) - 1) as f64;
    let vertices: Vec<String> = days
        .iter()
        .enumerate()
        .map(|(k, (_, mb))| {
            format!(
                "{:.1},{:.1}",
                PAD + k as f64 * step,
                CHART_H - PAD - (*mb as f64 / top) * (CHART_H - 2.0 * PAD)
            )
        })
        .collect();
    format!(
        "<figure><figcaption>Stored size, {} to {}: the backup points recorded, by the day they \
         were taken ({} now)</figcaption>\
         <svg id=\"stored-chart\" data-points=\"{}\" viewBox=\"0 0 {CHART_W} {CHART_H}\" \
         width=\"{CHART_W}\" height=\"{CHART_H}\" role=\"img\">\
         <line x1=\"{PAD}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" class=\"axis\"/>\
         <text x=\"2\" y=\"{PAD}\" class=\"tick\">{}</text><text x=\"2\" y=\"{y0}\" class=\"tick\">0</text>\
         <polyline class=\"series\" points=\"{}\"/></svg></figure>",
        day_label(first.0),
        day_label(last.0),
        size(last.1),
        days.len(),
        size(top as u64),
        vertices.join(" "),
        y0 = CHART_H - PAD,
        x1 = CHART_W - PAD,
    )
}

/// A job's newest runs: a bar each, as long as the run took, red when it failed.
fn durations_chart(runs: &[(i64, i64, bool)]) -> String {
    if runs.is_empty() {
        return "<p class=\"empty\" id=\"durations-chart\">No run has finished yet.</p>".into();
    }
    let top = runs.iter().map(|r| r.1).max().unwrap_or(0).max(1) as f64;
    let slot = (CHART_W - 2.0 * PAD) / runs.len() as f64;
    let mut bars = String::new();
    for (k, (started, secs, ok)) in runs.iter().enumerate() {
        let h = (*secs as f64 / top * (CHART_H - 2.0 * PAD)).max(1.0);
        bars.push_str(&format!(
            "<rect class=\"{}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\">\
             <title>{}: {} s{}</title></rect>",
            if *ok { "run-ok" } else { "run-failed" },
            PAD + k as f64 * slot + slot * 0.1,
            CHART_H - PAD - h,
            slot * 0.8,
            jiff::Timestamp::from_second(*started).map_or(started.to_string(), |t| t
                .strftime("%Y-%m-%d %H:%M UTC")
                .to_string()),
            secs,
            if *ok { "" } else { ", failed" }
        ));
    }
    format!(
        "<figure><figcaption>How long its last {} runs took (longest: {} s)</figcaption>\
         <svg id=\"durations-chart\" data-runs=\"{}\" viewBox=\"0 0 {CHART_W} {CHART_H}\" \
         width=\"{CHART_W}\" height=\"{CHART_H}\" role=\"img\">\
         <line x1=\"{PAD}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" class=\"axis\"/>{bars}</svg></figure>",
        runs.len(),
        top as i64,
        runs.len(),
        y0 = CHART_H - PAD,
        x1 = CHART_W - PAD,
    )
}

/// A VM's last days: a square a day, green when a backup point was taken, red when its job
/// ran and none was, grey when it did not run.
fn day_grid(days: &[(i64, crate::model::DayMark)]) -> String {
    if days.is_empty() {
        return String::new();
    }
    let cell = 18.0;
    let mut squares = String::new();
    for (k, (day, mark)) in days.iter().enumerate() {
        squares.push_str(&format!(
            "<rect class=\"day-{}\" x=\"{:.0}\" y=\"4\" width=\"{}\" height=\"{}\"><title>{}: {}</title></rect>",
            mark.word(),
            4.0 + k as f64 * (cell + 3.0),
            cell,
            cell,
            day_label(*day),
            mark.word().replace('-', " ")
        ));
    }
    let backed = days
        .iter()
        .filter(|d| d.1 == crate::model::DayMark::BackedUp)
        .count();
    format!(
        "<figure><figcaption>The last {} days: backed up on {backed} (green), its job ran without \
         a backup of it (red), no run (grey)</figcaption>\
         <svg id=\"day-grid\" data-days=\"{}\" viewBox=\"0 0 {w:.0} 26\" width=\"{w:.0}\" height=\"26\" role=\"img\">{squares}</svg></figure>",
        days.len(),
        days.len(),
        w = 8.0 + days.len() as f64 * (cell + 3.0),
    )
}

fn state_cell(v: &Vm) -> String {
    let s = v.state.unwrap_or("—");
    format!("<span class=\"{s}\">{s}</span>")
}

/// Whether a VM is late on its own: in a job and never backed up. The VMs of an overdue job
/// are said by that job's row (a thousand rows of one cause would hide the others).
pub fn late(v: &Vm, overdue: &std::collections::HashSet<u64>) -> bool {
    v.job.is_some_and(|j| !overdue.contains(&j)) && v.last_backup.is_none()
}

pub fn overview(snap: &Snapshot) -> String {
    if snap.jobs.is_empty() && snap.vms.is_empty() && snap.images.is_empty() {
        return "<p class=\"empty\">Nothing here yet. Define a datastore, register VMs and \
                create a backup job (<code>backstop backupjob datastore create</code>, \
                <code>vm register</code>, <code>create</code>); their state shows here.</p>"
            .into();
    }
    let mut body = String::new();
    let failing: Vec<&Vm> = snap
        .vms
        .iter()
        .filter(|v| v.state == Some("ERROR"))
        .collect();
    let running: Vec<&Vm> = snap
        .vms
        .iter()
        .filter(|v| v.state == Some("ONGOING"))
        .collect();
    let overdue = crate::overdue::overdue(snap);
    let overdue_jobs: std::collections::HashSet<u64> = overdue
        .iter()
        .filter(|o| o.kind == "backup")
        .map(|o| o.id)
        .collect();
    let late_vms: Vec<&Vm> = snap
        .vms
        .iter()
        .filter(|v| late(v, &overdue_jobs) && !matches!(v.state, Some("ERROR" | "ONGOING")))
        .collect();
    body.push_str("<h2>Needs attention</h2>");
    if !overdue.is_empty() {
        body.push_str(
            "<table id=\"overdue\"><tr><th>job</th><th>state</th><th>due since</th><th>why</th></tr>",
        );
        for o in &overdue {
            let link = match o.kind {
                "backup" => format!("/jobs/{}", o.id),
                kind => format!("/{kind}-jobs?q={}", o.id),
            };
            body.push_str(&format!(
                "<tr class=\"overdue\" data-job=\"{kind}-{id}\"><td><a href=\"{link}\">{kind} job {id} ({name})</a></td>\
                 <td class=\"late\">OVERDUE by {by}</td><td>{since}</td><td>{why}</td></tr>",
                kind = o.kind,
                id = o.id,
                name = esc(&o.name),
                by = crate::overdue::span(o.late_by(snap.now)),
                since = when(Some(o.due_since)),
                why = esc(&o.why),
            ));
        }
        body.push_str("</table>");
    }
    let vms_to_show = !(failing.is_empty() && running.is_empty() && late_vms.is_empty());
    if !vms_to_show && overdue.is_empty() {
        body.push_str("<p class=\"ok\">Nothing is failing, late or running.</p>");
    }
    if vms_to_show {
        body.push_str("<table id=\"attention\"><tr><th>VM</th><th>state</th><th>why</th></tr>");
        for v in &failing {
            body.push_str(&format!(
                "<tr class=\"failing\" data-vm=\"{}\"><td><a href=\"/vms/{}\">{} ({})</a></td>\
                 <td>{}</td><td>{}</td></tr>",
                v.id,
                v.id,
                v.id,
                esc(&v.name),
                state_cell(v),
                esc(v.reason.as_deref().unwrap_or("no reason recorded"))
            ));
        }
        for v in &running {
            let progress = v.progress.map_or(String::new(), |(done, total, read, _)| {
                format!(
                    "; <span class=\"progress\">{}% ({} read)</span>",
                    (done * 100).checked_div(total).unwrap_or(0),
                    size(read / (1 << 20))
                )
            });
            body.push_str(&format!(
                "<tr class=\"running\" data-vm=\"{}\"><td><a href=\"/vms/{}\">{} ({})</a></td>\
                 <td>{}</td><td>running since {}{progress}</td></tr>",
                v.id,
                v.id,
                v.id,
                esc(&v.name),
                state_cell(v),
                when(v.started_at_ms.map(|t| t / 1000))
            ));
        }
        for v in &late_vms {
            body.push_str(&format!(
                "<tr class=\"late\" data-vm=\"{}\"><td><a href=\"/vms/{}\">{} ({})</a></td>\
                 <td class=\"late\">LATE</td><td>last backup {}</td></tr>",
                v.id,
                v.id,
                v.id,
                esc(&v.name),
                ago(snap.now, v.last_backup),
            ));
        }
        body.push_str("</table>");
    }
    body.push_str(
        "<h2>Backup jobs</h2><table id=\"jobs\"><tr><th>job</th><th>mode</th><th>VMs</th>\
         <th>last run</th><th>next run</th><th>state</th></tr>",
    );
    if snap.jobs.is_empty() {
        body.push_str("<tr><td colspan=\"6\" class=\"empty\">no backup jobs</td></tr>");
    }
    for j in &snap.jobs {
        let states: Vec<String> = ["ERROR", "ONGOING", "OUTDATED", "UPDATED"]
            .iter()
            .filter_map(|s| {
                let n = snap
                    .vms
                    .iter()
                    .filter(|v| v.job == Some(j.id) && v.state == Some(*s))
                    .count();
                (n > 0).then(|| format!("<span class=\"{s}\">{n} {s}</span>"))
            })
            .collect();
        body.push_str(&format!(
            "<tr><td><a href=\"/jobs/{}\">{} {}</a>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            j.id,
            j.id,
            esc(&j.name),
            if j.locked { " (locked)" } else { "" },
            j.mode,
            j.vms.len(),
            when(j.last_run),
            when(j.next_run),
            states.join(", ")
        ));
    }
    body.push_str("</table>");
    body.push_str(&datastores_table(snap));
    if !snap.second_copies.is_empty() {
        body.push_str(
            "<h2>Sync and verify jobs</h2><table id=\"copies\"><tr><th>job</th><th>last run</th><th>state</th></tr>",
        );
        for c in &snap.second_copies {
            body.push_str(&format!(
                "<tr><td>{} job {} {}</td><td>{}</td><td>{}</td></tr>",
                c.kind,
                c.id,
                esc(&c.name),
                when(c.last_run),
                copy_state(c)
            ));
        }
        body.push_str("</table>");
    }
    body
}

/// How a sync or verify job's last run went, as a table cell.
fn copy_state(c: &crate::model::SecondCopy) -> String {
    match (&c.problem, c.last_run) {
        (Some(p), _) => format!("<span class=\"bad\">{}</span>", esc(p)),
        (None, Some(_)) => "<span class=\"ok\">ok</span>".into(),
        (None, None) => "never run".into(),
    }
}

fn datastores_table(snap: &Snapshot) -> String {
    let mut body = String::from(
        "<h2>Datastores</h2><table id=\"datastores\"><tr><th>datastore</th><th>images</th><th>stored</th></tr>",
    );
    if snap.datastores.is_empty() {
        body.push_str("<tr><td colspan=\"3\" class=\"empty\">no datastores</td></tr>");
    }
    for (id, name) in &snap.datastores {
        let imgs: Vec<&Image> = snap.images.iter().filter(|i| i.datastore == *id).collect();
        let mb: u64 = imgs.iter().map(|i| i.stored_mb).sum();
        body.push_str(&format!(
            "<tr><td><a href=\"/datastores/{id}\">{id} {}</a></td><td>{}</td><td>{}</td></tr>",
            esc(name),
            imgs.len(),
            size(mb)
        ));
    }
    body.push_str("</table>");
    body
}

fn images_table(snap: &Snapshot, images: &[&Image]) -> String {
    if images.is_empty() {
        return "<p class=\"empty\">No backups yet.</p>".into();
    }
    let mut body = String::from(
        "<table class=\"images\"><tr><th>image</th><th>increment</th><th>type</th>\
         <th>taken</th><th>size</th><th>verified</th></tr>",
    );
    for i in images {
        for n in &i.increments {
            let verified = match n.verified {
                None => "—".to_string(),
                Some((t, true)) => format!("<span class=\"ok\">ok</span> {}", when(Some(t))),
                Some((t, false)) => format!("<span class=\"bad\">DAMAGED</span> {}", when(Some(t))),
            };
            body.push_str(&format!(
                "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{verified}</td></tr>",
                i.id,
                if i.protected { " (protected)" } else { "" },
                n.id,
                esc(&n.kind),
                when(Some(n.date)),
                size(n.size_mb)
            ));
        }
    }
    body.push_str("</table>");
    let _ = snap;
    body
}

/// A VM's page: its title and body.
pub fn vm(snap: &Snapshot, id: u64) -> Option<(String, String)> {
    let v = snap.vms.iter().find(|v| v.id == id)?;
    let mut body = format!(
        "<p>State: {} · host {} · job {} · last backup {} · failures in a row: {}</p>",
        state_cell(v),
        esc(v.host.as_deref().unwrap_or("—")),
        v.job.map_or("none".to_string(), |j| format!(
            "<a href=\"/jobs/{j}\">{j}</a>"
        )),
        ago(snap.now, v.last_backup),
        v.failures
    );
    if let Some(r) = &v.reason {
        body.push_str(&format!("<p class=\"bad\">{}</p>", esc(r)));
    }
    let images: Vec<&Image> = snap.images.iter().filter(|i| i.vm == id).collect();
    body.push_str(&day_grid(&snap.charts.grid));
    body.push_str("<h2>Backups</h2>");
    body.push_str(&images_table(snap, &images));
    if let Some(plan) = retention(snap, v, &images) {
        body.push_str(&plan);
    }
    Some((format!("VM {id} ({})", v.name), body))
}

/// The VM's retention plan under its job's keep rules, read-only.
fn retention(snap: &Snapshot, v: &Vm, images: &[&Image]) -> Option<String> {
    use backstop_backupjob::retention::{Keep, Point, plan_chain};
    let job = snap.jobs.iter().find(|j| Some(j.id) == v.job)?;
    let keep = parse_keep(&job.keep);
    let mut rows = Vec::new();
    for i in images.iter().filter(|i| i.job == Some(job.id)) {
        if job.mode == "FULL" {
            if let Some(n) = i.increments.last() {
                rows.push((i.id, None, n.date, i.protected));
            }
        } else {
            rows.extend(
                i.increments
                    .iter()
                    .map(|n| (i.id, Some(n.id), n.date, i.protected)),
            );
        }
    }
    let points: Vec<Point> = rows
        .iter()
        .map(|r| Point {
            at: r.2,
            protected: r.3,
        })
        .collect();
    let tz = jiff::tz::TimeZone::system();
    let decisions = plan_chain(&points, &keep, &tz);
    let mut out = format!(
        "<h2>Retention plan</h2><p>{}</p><table id=\"retention\"><tr><th>point</th><th>taken</th><th>plan</th></tr>",
        if keep == Keep::default() {
            "No keep rule: everything stays.".to_string()
        } else {
            esc(&job.keep)
        }
    );
    for (r, d) in rows.iter().zip(decisions) {
        out.push_str(&format!(
            "<tr><td>image {}{}</td><td>{}</td><td>{}</td></tr>",
            r.0,
            r.1.map_or(String::new(), |n| format!(" increment {n}")),
            when(Some(r.2)),
            if d.keep {
                format!(
                    "<span class=\"ok\">keep</span> ({})",
                    esc(&d.reasons.join(", "))
                )
            } else {
                "<span class=\"bad\">goes</span>".to_string()
            }
        ));
    }
    out.push_str("</table>");
    Some(out)
}

fn parse_keep(text: &str) -> backstop_backupjob::retention::Keep {
    let mut k = backstop_backupjob::retention::Keep::default();
    for part in text.split_whitespace() {
        let Some((name, n)) = part.split_once('=') else {
            continue;
        };
        let n: u32 = n.parse().unwrap_or(0);
        match name {
            "KEEP_LAST" => k.last = n,
            "KEEP_HOURLY" => k.hourly = n,
            "KEEP_DAILY" => k.daily = n,
            "KEEP_WEEKLY" => k.weekly = n,
            "KEEP_MONTHLY" => k.monthly = n,
            "KEEP_YEARLY" => k.yearly = n,
            _ => {}
        }
    }
    k
}

/// A backup job's page; `actions` is the admin session's CSRF token when the page offers its
/// buttons (run, retry, cancel, the retention plan).
pub fn job(snap: &Snapshot, id: u64, actions: Option<&str>) -> Option<(String, String)> {
    let j = snap.jobs.iter().find(|j| j.id == id)?;
    let mut body = actions.map_or(String::new(), |csrf| job_buttons(id, csrf));
    body.push_str(&format!(
        "<p>Mode {} · priority {} · datastore {} · keep: {} · last run {} (took {}) · next run {}</p>\
         <h2>VMs</h2><table id=\"vms\"><tr><th>VM</th><th>state</th><th>last backup</th><th>reason</th></tr>",
        j.mode,
        j.priority,
        j.datastore_id.map_or("—".to_string(), |d| format!(
            "<a href=\"/datastores/{d}\">{d}</a>"
        )),
        if j.keep.is_empty() {
            "all".to_string()
        } else {
            esc(&j.keep)
        },
        when(j.last_run),
        j.last_duration
            .map_or("—".to_string(), |d| format!("{d} s")),
        when(j.next_run)
    ));
    for v in snap.vms.iter().filter(|v| v.job == Some(id)) {
        body.push_str(&format!(
            "<tr><td><a href=\"/vms/{}\">{} ({})</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            v.id,
            v.id,
            esc(&v.name),
            state_cell(v),
            ago(snap.now, v.last_backup),
            esc(v.reason.as_deref().unwrap_or(""))
        ));
    }
    body.push_str("</table>");
    body.push_str(&durations_chart(&snap.charts.durations));
    Some((format!("Backup job {id} ({})", j.name), body))
}

/// A datastore's page: a row per image (its points are on its VM's page), so that a
/// datastore of 500,000 points is a page of its images, not of every point.
/// How many images a datastore's page lists at a time.
pub const IMAGES_PER_PAGE: usize = 500;

/// A datastore's page `page` (from 1): its chart, and its images a page at a time.
pub fn datastore(snap: &Snapshot, id: u64, page: usize) -> Option<(String, String)> {
    let (_, name) = snap.datastores.iter().find(|d| d.0 == id)?;
    let images: Vec<&Image> = snap.images.iter().filter(|i| i.datastore == id).collect();
    if images.is_empty() {
        return Some((
            format!("Datastore {id} ({name})"),
            "<p class=\"empty\">No backups yet.</p>".into(),
        ));
    }
    let mut body = stored_chart(&snap.charts.stored);
    let total = images.len();
    let pages = total.div_ceil(IMAGES_PER_PAGE).max(1);
    let page = page.min(pages);
    let from = (page - 1) * IMAGES_PER_PAGE;
    let shown = &images[from..(from + IMAGES_PER_PAGE).min(total)];
    let link = |p: usize, label: &str| {
        format!("<a href=\"/datastores/{id}?page={p}\" rel=\"{label}\">{label}</a>")
    };
    body.push_str(&format!(
        "<p class=\"count\" id=\"images-shown\">images {}–{} of {total}{}{}</p>",
        from + 1,
        from + shown.len(),
        if page > 1 {
            format!(" · {}", link(page - 1, "prev"))
        } else {
            String::new()
        },
        if page < pages {
            format!(" · {}", link(page + 1, "next"))
        } else {
            String::new()
        },
    ));
    body.push_str(
        "<table class=\"images\"><tr><th>image</th><th>VM</th><th>job</th><th>points</th>\
         <th>newest</th><th>stored</th></tr>",
    );
    for i in shown {
        body.push_str(&format!(
            "<tr><td>{}{}</td><td><a href=\"/vms/{vm}\">{vm}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            i.id,
            if i.protected { " (protected)" } else { "" },
            i.job.map_or("—".to_string(), |j| format!("<a href=\"/jobs/{j}\">{j}</a>")),
            i.points,
            when(i.newest),
            size(i.stored_mb),
            vm = i.vm,
        ));
    }
    body.push_str("</table>");
    Some((format!("Datastore {id} ({name})"), body))
}

pub fn runs(snap: &Snapshot) -> String {
    let mut body = String::from(
        "<table id=\"runs\"><tr><th>when</th><th>what</th><th>kind</th><th>result</th><th>detail</th></tr>",
    );
    if snap.runs.is_empty() {
        body.push_str("<tr><td colspan=\"5\" class=\"empty\">no runs yet</td></tr>");
    }
    for r in snap.runs.iter().take(500) {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            when(Some(r.started)),
            esc(&r.what),
            r.kind,
            if r.ok {
                "<span class=\"ok\">ok</span>"
            } else {
                "<span class=\"bad\">failed</span>"
            },
            esc(&r.detail)
        ));
    }
    body.push_str("</table>");
    body
}

/// The login form; with `tenants`, a user name field for OpenNebula users (left empty for
/// the page password).
pub fn login(csrf: &str, failed: bool, tenants: bool) -> String {
    let user = if tenants {
        "<p><label>OpenNebula user <input name=\"user\" autocomplete=\"username\" autofocus></label> \
         <small>(empty: backstop's own password)</small></p>"
    } else {
        ""
    };
    page(
        "Log in",
        &format!(
            "{}<form method=\"post\" action=\"/login\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             {user}<label>Password <input type=\"password\" name=\"password\"{}></label> \
             <button>Log in</button></form>",
            match (failed, tenants) {
                (false, _) => "",
                (true, false) => "<p class=\"bad\">Wrong password.</p>",
                (true, true) => "<p class=\"bad\">Wrong user name or password.</p>",
            },
            esc(csrf),
            if tenants { "" } else { " autofocus" }
        ),
        None,
        None,
    )
}

/// The line on top of a tenant's pages: who they are, and that they see their VMs only.
pub fn tenant_line(user: &str) -> String {
    format!(
        "<p id=\"tenant\">Logged in as <strong>{}</strong> (OpenNebula): the VMs oned lets you use, and their backups.</p>",
        esc(user)
    )
}

/// The page shown when oned cannot check a tenant's login or say which VMs are theirs (why is
/// on the server's stderr, not shown to whoever asked).
pub fn oned_unavailable() -> String {
    "<p class=\"bad\">OpenNebula (oned) cannot check your login or say which VMs are yours now.</p>\
     <p>The dashboard asks oned which VMs an OpenNebula user may see; until oned answers, it \
     shows them nothing. Try again in a minute; the administrator finds why in the dashboard's \
     log, and the administrator's own login (no user name) does not need oned.</p>"
        .to_string()
}

/// Whether a row matches a list page's search: every word of `q` is found (case aside) in one
/// of the row's texts. An empty search matches everything.
pub fn matches(q: &str, texts: &[&str]) -> bool {
    let hay: Vec<String> = texts.iter().map(|t| t.to_lowercase()).collect();
    q.split_whitespace()
        .map(str::to_lowercase)
        .all(|w| hay.iter().any(|h| h.contains(&w)))
}

fn search_form(action: &str, q: &str, shown: usize, total: usize) -> String {
    format!(
        "<form class=\"search\" method=\"get\" action=\"{action}\">\
         <input type=\"search\" name=\"q\" value=\"{}\" placeholder=\"id, name, host, state\"> \
         <button>Search</button></form><p class=\"count\">{shown} of {total}</p>",
        esc(q)
    )
}

/// `/jobs`: every backup job, searched by id, name, mode or the state of its VMs.
pub fn jobs_list(snap: &Snapshot, q: &str) -> String {
    let rows: Vec<_> = snap
        .jobs
        .iter()
        .filter(|j| {
            let states: Vec<&str> = snap
                .vms
                .iter()
                .filter(|v| v.job == Some(j.id))
                .filter_map(|v| v.state)
                .collect();
            let mut texts = vec![j.name.as_str(), j.mode];
            texts.extend(states);
            let id = j.id.to_string();
            texts.push(&id);
            matches(q, &texts)
        })
        .collect();
    let mut body = search_form("/jobs", q, rows.len(), snap.jobs.len());
    body.push_str(
        "<table id=\"list\"><tr><th>job</th><th>priority</th><th>mode</th><th>VMs</th>\
         <th>last run</th><th>next run</th></tr>",
    );
    for j in rows {
        body.push_str(&format!(
            "<tr data-id=\"{id}\"><td><a href=\"/jobs/{id}\">{id} {}</a>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&j.name),
            if j.locked { " (locked)" } else { "" },
            j.priority,
            j.mode,
            j.vms.len(),
            when(j.last_run),
            when(j.next_run),
            id = j.id,
        ));
    }
    body.push_str("</table>");
    body
}

/// `/vms`: every VM, searched by id, name, host, state or job.
pub fn vms_list(snap: &Snapshot, q: &str) -> String {
    let rows: Vec<&Vm> = snap
        .vms
        .iter()
        .filter(|v| {
            let id = v.id.to_string();
            let job = v.job.map(|j| format!("job {j}")).unwrap_or_default();
            matches(
                q,
                &[
                    &id,
                    &v.name,
                    v.host.as_deref().unwrap_or(""),
                    v.state.unwrap_or(""),
                    &job,
                ],
            )
        })
        .collect();
    let mut body = search_form("/vms", q, rows.len(), snap.vms.len());
    body.push_str(
        "<table id=\"list\"><tr><th>VM</th><th>host</th><th>job</th><th>state</th>\
         <th>last backup</th></tr>",
    );
    for v in rows {
        body.push_str(&format!(
            "<tr data-id=\"{id}\"><td><a href=\"/vms/{id}\">{id} {}</a></td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            esc(&v.name),
            esc(v.host.as_deref().unwrap_or("—")),
            v.job.map_or("—".to_string(), |j| format!(
                "<a href=\"/jobs/{j}\">{j}</a>"
            )),
            state_cell(v),
            ago(snap.now, v.last_backup),
            id = v.id,
        ));
    }
    body.push_str("</table>");
    body
}

/// `/datastores`: every backup datastore, searched by id or name.
pub fn datastores_list(snap: &Snapshot, q: &str) -> String {
    let rows: Vec<&(u64, String)> = snap
        .datastores
        .iter()
        .filter(|(id, name)| matches(q, &[&id.to_string(), name]))
        .collect();
    let mut body = search_form("/datastores", q, rows.len(), snap.datastores.len());
    body.push_str("<table id=\"list\"><tr><th>datastore</th><th>images</th><th>stored</th></tr>");
    for (id, name) in rows {
        let imgs: Vec<&Image> = snap.images.iter().filter(|i| i.datastore == *id).collect();
        body.push_str(&format!(
            "<tr data-id=\"{id}\"><td><a href=\"/datastores/{id}\">{id} {}</a></td><td>{}</td><td>{}</td></tr>",
            esc(name),
            imgs.len(),
            size(imgs.iter().map(|i| i.stored_mb).sum())
        ));
    }
    body.push_str("</table>");
    body
}

/// `/sync-jobs` and `/verify-jobs`: the jobs of that kind, searched by id, name or problem.
pub fn copies_list(snap: &Snapshot, kind: &str, q: &str) -> String {
    let all: Vec<_> = snap
        .second_copies
        .iter()
        .filter(|c| c.kind == kind)
        .collect();
    let rows: Vec<_> = all
        .iter()
        .filter(|c| {
            matches(
                q,
                &[
                    &c.id.to_string(),
                    &c.name,
                    c.problem.as_deref().unwrap_or("ok"),
                ],
            )
        })
        .collect();
    let mut body = search_form(&format!("/{kind}-jobs"), q, rows.len(), all.len());
    body.push_str("<table id=\"list\"><tr><th>job</th><th>last run</th><th>state</th></tr>");
    for c in rows {
        body.push_str(&format!(
            "<tr data-id=\"{}\"><td>{} {}</td><td>{}</td><td>{}</td></tr>",
            c.id,
            c.id,
            esc(&c.name),
            when(c.last_run),
            copy_state(c)
        ));
    }
    body.push_str("</table>");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_sizes_read_well() {
        assert_eq!(
            esc("<script>\"x\"&'y'</script>"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(size(12), "12 MiB");
        assert_eq!(size(1536), "1.5 GiB");
        assert_eq!(size(3 * 1024 * 1024), "3.0 TiB");
        assert_eq!(ago(1000, Some(990)), "10 s ago");
        assert_eq!(ago(1000, None), "never");
        let k = parse_keep("KEEP_LAST=2 KEEP_DAILY=7");
        assert_eq!((k.last, k.daily, k.weekly), (2, 7, 0));
    }

    #[test]
    fn a_search_needs_every_word_somewhere() {
        assert!(matches("", &["anything"]));
        assert!(matches("WEB hv1", &["web-22", "hv1"]));
        assert!(matches("job 1", &["22", "job 1"]));
        assert!(!matches("web hv2", &["web-22", "hv1"]));
        assert!(!matches("x", &[]));
    }

    #[test]
    fn a_large_datastore_is_shown_a_page_of_images_at_a_time() {
        let image = |id: u64| Image {
            id,
            vm: id,
            job: None,
            datastore: 1,
            protected: false,
            points: 1,
            stored_mb: 1,
            newest: None,
            increments: Vec::new(),
        };
        let snap = Snapshot {
            now: 0,
            jobs: Vec::new(),
            vms: Vec::new(),
            images: (1..=1200).map(image).collect(),
            datastores: vec![(1, "big".into())],
            runs: Vec::new(),
            second_copies: Vec::new(),
            scheduler: None,
            charts: Default::default(),
        };
        let rows = |body: &str| body.matches("<tr><td>").count();
        let (_, first) = datastore(&snap, 1, 1).expect("page");
        assert_eq!(rows(&first), 500);
        assert!(
            first.contains("images 1–500 of 1200 · <a href=\"/datastores/1?page=2\" rel=\"next\">")
        );
        let (_, last) = datastore(&snap, 1, 9).expect("page");
        assert_eq!(rows(&last), 200, "a page past the end shows the last");
        assert!(
            last.contains(
                "images 1001–1200 of 1200 · <a href=\"/datastores/1?page=2\" rel=\"prev\">"
            )
        );
    }
}
