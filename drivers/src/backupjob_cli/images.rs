//! `backupjob image list|show|restore`: the backup images the runs recorded, and a point of
//! one written out as files.

use super::RestoreArgs;
use super::{Args, input, print};
use backstop_backupjob::Error;
use backstop_backupjob::json_time;
use backstop_backupjob::ops::{self, images::RestoreOptions};
use backstop_backupjob::state::State;
use backstop_backupjob::state::sync::Verdict;

pub(super) fn list(st: &State, json: &bool) -> Result<(), Error> {
    let images = st.all_images()?;
    if *json {
        let v: Vec<_> = images
            .iter()
            .map(|i| {
                serde_json::json!({
                    "id": i.id,
                    "vm": i.vm_id,
                    "job": i.job_id,
                    "datastore": i.datastore_id,
                    "increments": i.increments.iter().map(|n| serde_json::json!({
                        "id": n.id, "source": n.source, "size_mb": n.size_mb, "type": n.kind,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        print(&serde_json::Value::Array(v).to_string())?;
    } else {
        print(&format!(
            "{:>4} {:>5} {:>4} {:>4} INCREMENTS",
            "ID", "VM", "JOB", "DS"
        ))?;
        for i in images {
            let incs: Vec<String> = i
                .increments
                .iter()
                .map(|n| format!("{}:{}", n.id, n.source))
                .collect();
            print(&format!(
                "{:>4} {:>5} {:>4} {:>4} {}",
                i.id,
                i.vm_id,
                i.job_id.map_or("-".into(), |j| j.to_string()),
                i.datastore_id,
                incs.join(",")
            ))?;
        }
    }
    Ok(())
}

pub(super) fn restore_cmd(st: &State, args: &Args, r: &RestoreArgs) -> Result<(), Error> {
    let RestoreArgs {
        id,
        to,
        increment,
        disk_id,
    } = r;
    let options = RestoreOptions {
        image: *id,
        to: to.clone(),
        increment: *increment,
        disk_id: *disk_id,
    };
    for f in ops::images::restore(&super::env(args), st, &options)?.files {
        print(&f.display().to_string())?;
    }
    Ok(())
}

/// The last verify verdict on each increment's snapshot (its SOURCE is the short id), if any.
fn verdicts(
    st: &State,
    img: &backstop_backupjob::state::ImageRow,
) -> Result<Vec<Option<Verdict>>, Error> {
    let repo = backstop_datastore::target::repo_id(img.job_id, img.vm_id);
    let all = st.verdicts(img.datastore_id, &repo)?;
    Ok(img
        .increments
        .iter()
        .map(|n| {
            all.iter()
                .find(|v| !n.source.is_empty() && v.snapshot.starts_with(n.source.as_str()))
                .cloned()
        })
        .collect())
}

fn verdict_json(v: &Option<Verdict>) -> serde_json::Value {
    match v {
        None => serde_json::Value::Null,
        Some(v) => serde_json::json!({
            "verified_at": json_time::seconds(Some(v.verified_at)), "ok": v.bad.is_empty(), "bad_blobs": v.bad.len(),
        }),
    }
}

fn date(at: i64) -> String {
    jiff::Timestamp::from_second(at)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| at.to_string())
}

pub(super) fn show(st: &State, id: u64, json: bool) -> Result<(), Error> {
    let img = st.image(id).map_err(|x| input(x.to_string()))?;
    let verified = verdicts(st, &img)?;
    if json {
        return print(
            &serde_json::json!({
                "id": img.id, "vm": img.vm_id, "job": img.job_id, "datastore": img.datastore_id,
                "protected": img.protected,
                "increments": img.increments.iter().zip(&verified).map(|(n, v)| serde_json::json!({
                    "id": n.id, "type": n.kind, "source": n.source, "size_mb": n.size_mb,
                    "date": json_time::seconds(Some(n.created_at)), "verify": verdict_json(v),
                })).collect::<Vec<_>>(),
            })
            .to_string(),
        );
    }
    let mut out = format!(
        "BACKUP IMAGE {id} INFORMATION\nID        : {id}\nVM        : {}\nJOB       : {}\n\
         DATASTORE : {}\nPROTECTED : {}\n\nBACKUP INCREMENTS\n{:>3} {:<9} {:>8} {:<20} {:<10} VERIFY\n",
        img.vm_id,
        img.job_id.map_or("-".into(), |j| j.to_string()),
        img.datastore_id,
        if img.protected { "yes" } else { "no" },
        "ID",
        "TYPE",
        "SIZE_MB",
        "DATE",
        "SOURCE"
    );
    for (n, v) in img.increments.iter().zip(&verified) {
        let verify = match v {
            None => "-".to_string(),
            Some(v) if v.bad.is_empty() => format!("ok {}", date(v.verified_at)),
            Some(v) => format!("DAMAGED ({} blobs) {}", v.bad.len(), date(v.verified_at)),
        };
        out.push_str(&format!(
            "{:>3} {:<9} {:>8} {:<20} {:<10} {verify}\n",
            n.id,
            n.kind,
            n.size_mb,
            date(n.created_at),
            n.source
        ));
    }
    print(out.trim_end())
}
