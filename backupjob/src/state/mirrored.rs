//! OpenNebula mode (docs/opennebula-mode.md): the state's images of a VM kept a copy of
//! oned's backup images, under oned's ids; and a job's VMs set from oned's inventory.

use super::*;

/// A backup image as oned records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirroredImage {
    pub id: u64,
    pub vm: u64,
    pub job: Option<u64>,
    pub datastore: u64,
    pub created_at: i64,
    /// Its increments (one FULL for an image of FULL mode), oldest first.
    pub increments: Vec<IncrementRow>,
}

impl State {
    /// Records `image` as oned has it: its row (keeping whether it is protected) and exactly
    /// its increments, in one transaction. An id the state holds for another VM or datastore
    /// (an image of standalone mode) is refused.
    pub fn mirror_image(&mut self, image: &MirroredImage) -> Result<(), StateError> {
        let path = self.path.clone();
        let err = |e| StateError::Sqlite {
            path: path.clone(),
            source: e,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let held: Option<(i64, i64)> = tx
            .query_row(
                "SELECT vm_id, datastore_id FROM images WHERE id = ?1",
                params![image.id as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(err)?;
        match held {
            Some((vm, ds)) if vm as u64 != image.vm || ds as u64 != image.datastore => {
                return Err(StateError::Invalid {
                    path: path.clone(),
                    message: format!(
                        "oned's backup image {} (VM {}) has the id of image {} of VM {vm} in \
                         datastore {ds} of this state",
                        image.id, image.vm, image.id
                    ),
                });
            }
            Some(_) => {
                tx.execute(
                    "UPDATE images SET job_id = ?1, created_at = ?2 WHERE id = ?3",
                    params![
                        image.job.map(|j| j as i64),
                        image.created_at,
                        image.id as i64
                    ],
                )
                .map_err(err)?;
            }
            None => {
                tx.execute(
                    "INSERT INTO images (id, vm_id, job_id, datastore_id, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        image.id as i64,
                        image.vm as i64,
                        image.job.map(|j| j as i64),
                        image.datastore as i64,
                        image.created_at
                    ],
                )
                .map_err(err)?;
            }
        }
        tx.execute(
            "DELETE FROM increments WHERE image_id = ?1",
            params![image.id as i64],
        )
        .map_err(err)?;
        for i in &image.increments {
            tx.execute(
                "INSERT INTO increments (image_id, id, source, size_mb, kind, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    image.id as i64,
                    i.id as i64,
                    i.source,
                    i.size_mb as i64,
                    i.kind,
                    i.created_at
                ],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Forgets the images of VM `vm` in datastore `datastore` that are not in `keep` (oned
    /// removed them); their ids.
    pub fn forget_images_except(
        &mut self,
        vm: u64,
        datastore: u64,
        keep: &[u64],
    ) -> Result<Vec<u64>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM images WHERE vm_id = ?1 AND datastore_id = ?2 ORDER BY id")
            .map_err(|e| self.sql(e))?;
        let ids: Vec<u64> = stmt
            .query_map(params![vm as i64, datastore as i64], |r| r.get::<_, i64>(0))
            .map_err(|e| self.sql(e))?
            .map(|r| r.map(|v| v as u64))
            .collect::<Result<_, _>>()
            .map_err(|e| self.sql(e))?;
        drop(stmt);
        let gone: Vec<u64> = ids.into_iter().filter(|i| !keep.contains(i)).collect();
        for id in &gone {
            self.remove_image(*id)?;
        }
        Ok(gone)
    }

    /// Sets a job's VMs (in backup order) from oned's inventory, its template unchanged. A
    /// VM another job holds stays there: those are returned as (VM, the other job).
    pub fn set_job_vms(&mut self, job: u64, vms: &[u64]) -> Result<Vec<(u64, u64)>, StateError> {
        let path = self.path.clone();
        let err = |e| StateError::Sqlite {
            path: path.clone(),
            source: e,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let mut taken = Vec::new();
        let mut mine = Vec::new();
        for vm in vms {
            let other: Option<i64> = tx
                .query_row(
                    "SELECT job_id FROM job_vms WHERE vm_id = ?1 AND job_id != ?2",
                    params![*vm as i64, job as i64],
                    |r| r.get(0),
                )
                .optional()
                .map_err(err)?;
            match other {
                Some(o) => taken.push((*vm, o as u64)),
                None => mine.push(*vm),
            }
        }
        super::place_job_vms(&tx, job, &mine).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(taken)
    }
}
