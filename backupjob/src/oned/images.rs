//! The state's copy of oned's backup images of a VM (OpenNebula mode): after each backup and
//! when a run settles, the images `BACKUP_IDS` names in the job's datastore are read
//! (`one.image.info`) and recorded under oned's ids with exactly oned's increments; the
//! state's other images of the VM in that datastore are forgotten (oned removed them: its
//! KEEP_LAST, `oneimage delete`). Retention plans and the dashboard then see what oned has.

use crate::Error;
use crate::error::step;
use crate::state::{IncrementRow, MirroredImage, State};
use backstop_protocol::message::Image;
use backstop_protocol::oned::OnedClient;

/// An image document of oned as the state records it; `None` when it is not a backup image
/// of datastore `ds`.
pub fn parse_image(
    doc: &str,
    vm: u64,
    job: Option<u64>,
    ds: u64,
) -> Result<Option<MirroredImage>, String> {
    let root = backstop_protocol::xml::Element::parse(doc).map_err(|e| e.to_string())?;
    let image = Image::from_xml(&root).map_err(|e| e.to_string())?;
    if image.image_type != Some(6) || image.datastore_id != Some(ds) {
        return Ok(None);
    }
    let regtime: i64 = root
        .text_at("REGTIME")
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let increments: Vec<IncrementRow> = if image.increments.is_empty() {
        // An image of FULL mode: one point, the image itself.
        vec![IncrementRow {
            id: 0,
            source: image.source.clone(),
            size_mb: image.size_mb.unwrap_or(0),
            kind: "FULL".into(),
            created_at: regtime,
        }]
    } else {
        image
            .increments
            .iter()
            .map(|i| IncrementRow {
                id: i.id,
                source: i.source.clone(),
                size_mb: i.size_mb.unwrap_or(0),
                kind: match i.kind {
                    backstop_protocol::message::IncrementType::Full => "FULL".into(),
                    backstop_protocol::message::IncrementType::Increment => "INCREMENT".into(),
                },
                created_at: i.date.unwrap_or(regtime),
            })
            .collect()
    };
    Ok(Some(MirroredImage {
        id: image.id,
        vm,
        job,
        datastore: ds,
        created_at: regtime,
        increments,
    }))
}

/// Records oned's backup images of VM `vm` in datastore `ds` (`backup_ids`: the VM's
/// BACKUP_IDS) as the job's; forgets the ones oned no longer has. Returns the images kept.
pub fn mirror(
    state: &mut State,
    client: &OnedClient,
    vm: u64,
    backup_ids: &[u64],
    job: Option<u64>,
    ds: u64,
) -> Result<Vec<MirroredImage>, Error> {
    let mut kept = Vec::new();
    for &id in backup_ids {
        let Some(doc) = client.document_if_any("one.image.info", id)? else {
            continue;
        };
        if let Some(image) = parse_image(&doc, vm, job, ds)
            .map_err(|e| step(format!("oned's backup image {id}: {e}")))?
        {
            state.mirror_image(&image)?;
            kept.push(image);
        }
    }
    let ids: Vec<u64> = kept.iter().map(|i| i.id).collect();
    state.forget_images_except(vm, ds, &ids)?;
    Ok(kept)
}

/// How long oned may take to remove a backup image (its datastore's `rm`).
const DELETE_WITHIN: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes backup image `image` through oned (`one.image.delete`, which runs the datastore's
/// `rm`), waits until oned no longer has it, then forgets it. An image oned puts in ERROR
/// instead is reported with oned's message and stays recorded.
pub fn delete(state: &mut State, client: &OnedClient, image: u64) -> Result<(), Error> {
    client.image_delete(image)?;
    let started = std::time::Instant::now();
    loop {
        let Some(doc) = client.document_if_any("one.image.info", image)? else {
            state.remove_image(image)?;
            return Ok(());
        };
        let root = backstop_protocol::xml::Element::parse(&doc)
            .map_err(|e| step(format!("oned's image {image}: {e}")))?;
        // Image state 5: ERROR.
        if root.text_at("STATE").map(str::trim) == Some("5") {
            let why = root
                .text_at("TEMPLATE/ERROR")
                .unwrap_or("no message")
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            return Err(step(format!(
                "oned could not remove backup image {image}: {why}"
            )));
        }
        if started.elapsed() > DELETE_WITHIN {
            return Err(step(format!(
                "oned has not removed backup image {image} after {} s",
                DELETE_WITHIN.as_secs()
            )));
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oned_images_are_recorded_with_their_increments() {
        let doc = "<IMAGE><ID>21</ID><NAME>b</NAME><TYPE>6</TYPE><DATASTORE_ID>100</DATASTORE_ID>\
                   <SOURCE>aaaa</SOURCE><SIZE>12</SIZE><REGTIME>1000</REGTIME><TEMPLATE/>\
                   <BACKUP_INCREMENTS>\
                   <INCREMENT><ID>0</ID><PARENT_ID>-1</PARENT_ID><SOURCE>aaaa</SOURCE><SIZE>12</SIZE><TYPE>FULL</TYPE><DATE>1000</DATE></INCREMENT>\
                   <INCREMENT><ID>1</ID><PARENT_ID>0</PARENT_ID><SOURCE>bbbb</SOURCE><SIZE>2</SIZE><TYPE>INCREMENT</TYPE><DATE>2000</DATE></INCREMENT>\
                   </BACKUP_INCREMENTS></IMAGE>";
        let m = parse_image(doc, 4, Some(1), 100)
            .expect("parse")
            .expect("a backup");
        assert_eq!((m.id, m.created_at), (21, 1000));
        let incs: Vec<_> = m
            .increments
            .iter()
            .map(|i| {
                (
                    i.id,
                    i.source.as_str(),
                    i.size_mb,
                    i.kind.as_str(),
                    i.created_at,
                )
            })
            .collect();
        assert_eq!(
            incs,
            [
                (0, "aaaa", 12, "FULL", 1000),
                (1, "bbbb", 2, "INCREMENT", 2000)
            ]
        );
        // Another datastore's image, or not a backup: not this job's.
        assert_eq!(parse_image(doc, 4, Some(1), 101), Ok(None));
        let full = "<IMAGE><ID>22</ID><NAME>b</NAME><TYPE>6</TYPE><DATASTORE_ID>100</DATASTORE_ID>\
                    <SOURCE>cccc</SOURCE><SIZE>9</SIZE><REGTIME>3000</REGTIME><TEMPLATE/></IMAGE>";
        let m = parse_image(full, 4, None, 100)
            .expect("parse")
            .expect("a backup");
        assert_eq!(m.increments.len(), 1);
        assert_eq!(
            (m.increments[0].kind.as_str(), m.increments[0].size_mb),
            ("FULL", 9)
        );
    }
}
