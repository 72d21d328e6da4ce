//! The datastores and VMs the jobs use.

use super::*;

impl State {
    pub fn add_datastore(&mut self, name: &str, template: &str) -> Result<u64, StateError> {
        self.add_site(name, template, false)
    }

    /// A datastore under a given id (oned's, in OpenNebula mode).
    pub fn add_datastore_as(
        &mut self,
        id: u64,
        name: &str,
        template: &str,
    ) -> Result<(), StateError> {
        self.insert_site(Some(id), name, template, false)
            .map(|_| ())
    }

    /// A remote: the other site of a sync, written as a backup datastore's template.
    pub fn add_remote(&mut self, name: &str, template: &str) -> Result<u64, StateError> {
        self.add_site(name, template, true)
    }

    fn add_site(&mut self, name: &str, template: &str, remote: bool) -> Result<u64, StateError> {
        self.insert_site(None, name, template, remote)
    }

    /// Adds a datastore or remote, its secrets sealed, under `id` or the next one; its id.
    fn insert_site(
        &mut self,
        id: Option<u64>,
        name: &str,
        template: &str,
        remote: bool,
    ) -> Result<u64, StateError> {
        let sealed = self
            .seal
            .seal_template(template)
            .map_err(|m| self.invalid(m.0))?;
        self.conn
            .execute(
                "INSERT INTO datastores (id, name, template, remote) VALUES (?1, ?2, ?3, ?4)",
                params![id.map(|i| i as i64), name, sealed, remote],
            )
            .map_err(|e| {
                self.taken(e, || match id {
                    Some(id) => format!(
                        "a datastore or remote named {name:?} or with id {id} already exists"
                    ),
                    None => format!("a datastore or remote named {name:?} already exists"),
                })
            })?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    /// Replaces a remote's template (its name with it).
    pub fn update_remote(&mut self, id: u64, name: &str, template: &str) -> Result<(), StateError> {
        self.update_site(id, name, template, true)
    }

    /// Replaces a datastore's or remote's template (its name with it), its secrets sealed.
    pub(super) fn update_site(
        &mut self,
        id: u64,
        name: &str,
        template: &str,
        remote: bool,
    ) -> Result<(), StateError> {
        let sealed = self
            .seal
            .seal_template(template)
            .map_err(|m| self.invalid(m.0))?;
        let n = self
            .conn
            .execute(
                "UPDATE datastores SET name = ?1, template = ?2 WHERE id = ?3 AND remote = ?4",
                params![name, sealed, id as i64, remote],
            )
            .map_err(|e| {
                self.taken(e, || {
                    format!("a datastore or remote named {name:?} already exists")
                })
            })?;
        if n == 0 {
            let what = if remote { "remote" } else { "datastore" };
            return Err(self.invalid(format!("there is no {what} {id}")));
        }
        Ok(())
    }

    /// Forgets a remote (its repositories stay where they are).
    pub fn delete_remote(&mut self, id: u64) -> Result<(), StateError> {
        let n = self
            .conn
            .execute(
                "DELETE FROM datastores WHERE id = ?1 AND remote = 1",
                params![id as i64],
            )
            .map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(self.invalid(format!("there is no remote {id}")));
        }
        Ok(())
    }

    /// Every datastore, its secrets opened.
    pub fn datastores(&self) -> Result<Vec<super::Named>, StateError> {
        self.opened_sites(Some(false))
    }

    /// Every remote, its secrets opened.
    pub fn remotes(&self) -> Result<Vec<super::Named>, StateError> {
        self.opened_sites(Some(true))
    }

    fn opened_sites(&self, remote: Option<bool>) -> Result<Vec<super::Named>, StateError> {
        self.stored_sites(remote)?
            .into_iter()
            .map(|site| {
                let template = self
                    .seal
                    .open_template(&site.template)
                    .map_err(|m| self.invalid(format!("datastore {}: {}", site.id, m.0)))?;
                Ok(super::Named { template, ..site })
            })
            .collect()
    }

    /// Every datastore, remote or both as stored (secrets sealed).
    fn stored_sites(&self, remote: Option<bool>) -> Result<Vec<super::Named>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, name, template FROM datastores \
                 WHERE ?1 IS NULL OR remote = ?1 ORDER BY id",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![remote], |r| {
                Ok(super::Named {
                    id: r.get::<_, i64>(0)? as u64,
                    name: r.get(1)?,
                    template: r.get(2)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Seals the secrets a state written before sealing holds in clear (on open).
    pub(super) fn seal_stored_secrets(&mut self) -> Result<(), StateError> {
        for super::Named {
            id, template: text, ..
        } in self.stored_sites(None)?
        {
            let sealed = self
                .seal
                .seal_template(&text)
                .map_err(|m| self.invalid(format!("datastore {id}: {}", m.0)))?;
            if sealed != text {
                self.conn
                    .execute(
                        "UPDATE datastores SET template = ?1 WHERE id = ?2",
                        params![sealed, id as i64],
                    )
                    .map_err(|e| self.sql(e))?;
            }
        }
        Ok(())
    }

    /// Deletes a datastore that no job names and no recorded image lives in. `jobs_using` are
    /// the jobs whose template names it (the caller parses templates).
    pub fn delete_datastore(&mut self, id: u64, jobs_using: &[u64]) -> Result<(), StateError> {
        if self.rekey(id)?.is_some() {
            return Err(self.invalid(format!(
                "datastore {id} has a password change under way; complete or abort it first"
            )));
        }
        if let Some(j) = jobs_using.first() {
            return Err(self.invalid(format!(
                "datastore {id} is the DATASTORE_ID of backup job {j}; change or delete the job first"
            )));
        }
        let images: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM images WHERE datastore_id = ?1",
                params![id as i64],
                |r| r.get(0),
            )
            .map_err(|e| self.sql(e))?;
        if images > 0 {
            return Err(self.invalid(format!(
                "datastore {id} holds {images} backup images; remove them first"
            )));
        }
        let n = self
            .conn
            .execute(
                "DELETE FROM datastores WHERE id = ?1 AND remote = 0",
                params![id as i64],
            )
            .map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(self.invalid(format!("there is no datastore {id}")));
        }
        Ok(())
    }

    /// Forgets a VM that is in no job (its backup images stay).
    pub fn unregister_vm(&mut self, id: u64) -> Result<(), StateError> {
        let job: Option<i64> = self
            .conn
            .query_row(
                "SELECT job_id FROM job_vms WHERE vm_id = ?1",
                params![id as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        if let Some(j) = job {
            return Err(self.invalid(format!(
                "VM {id} is in backup job {j}; take it out of BACKUP_VMS first"
            )));
        }
        let n = self
            .conn
            .execute("DELETE FROM vms WHERE id = ?1", params![id as i64])
            .map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(self.invalid(format!("there is no registered VM {id}")));
        }
        Ok(())
    }

    /// Registers (or updates) a VM from its document.
    pub fn register_vm(
        &mut self,
        id: u64,
        name: &str,
        host: Option<&str>,
        document: &str,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO vms (id, name, host, document) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(id) DO UPDATE SET name = ?2, host = ?3, document = ?4",
                params![id as i64, name, host, document],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Every registered VM.
    pub fn vms(&self) -> Result<Vec<VmRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, name, host, document FROM vms ORDER BY id")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(VmRow {
                    id: r.get::<_, i64>(0)? as u64,
                    name: r.get(1)?,
                    host: r.get(2)?,
                    document: r.get(3)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }
}
