//! What `backupjob discover` records (docs/discovery.md): images under the ids their backups
//! name, jobs under the ids their repositories name.

use super::*;

impl State {
    /// A backup image under a given id (the one its backups name).
    pub fn add_image_as(
        &mut self,
        id: u64,
        vm: u64,
        job: Option<u64>,
        datastore: u64,
        created_at: i64,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO images (id, vm_id, job_id, datastore_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    id as i64,
                    vm as i64,
                    job.map(|j| j as i64),
                    datastore as i64,
                    created_at
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The image of datastore `datastore` with an increment whose source is `source`.
    pub fn image_with_source(
        &self,
        datastore: u64,
        source: &str,
    ) -> Result<Option<u64>, StateError> {
        self.conn
            .query_row(
                "SELECT i.id FROM images i JOIN increments n ON n.image_id = i.id
                 WHERE i.datastore_id = ?1 AND n.source = ?2",
                params![datastore as i64, source],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.map(|v| v as u64))
            .map_err(|e| self.sql(e))
    }

    pub fn job_exists(&self, id: u64) -> Result<bool, StateError> {
        self.conn
            .query_row(
                "SELECT 1 FROM jobs WHERE id = ?1",
                params![id as i64],
                |_| Ok(()),
            )
            .optional()
            .map(|v| v.is_some())
            .map_err(|e| self.sql(e))
    }

    /// A job under a given id with those of `vms` that are in no other job; the VMs taken.
    pub fn adopt_job(
        &mut self,
        id: u64,
        name: &str,
        template: &str,
        vms: &[u64],
    ) -> Result<Vec<u64>, StateError> {
        let path = self.path.clone();
        let err = |e| StateError::Sqlite {
            path: path.clone(),
            source: e,
        };
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute(
            "INSERT INTO jobs (id, name, priority, template) VALUES (?1, ?2, 50, ?3)",
            params![id as i64, name, template],
        )
        .map_err(err)?;
        let mut taken = Vec::new();
        for vm in vms {
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO job_vms (job_id, vm_id, position) VALUES (?1, ?2, ?3)",
                    params![id as i64, *vm as i64, taken.len() as i64],
                )
                .map_err(err)?;
            if n > 0 {
                taken.push(*vm);
            }
        }
        tx.commit().map_err(err)?;
        Ok(taken)
    }
}
