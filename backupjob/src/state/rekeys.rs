//! A datastore's password change as it goes (docs/rekey.md): begun, the template switched
//! once every repository opens with the new password, ended once the old keys are gone. Each
//! step is one transaction, so a killed change is found where it stopped.

use super::*;

/// How far a password change got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RekeyPhase {
    /// Keys for the new password are being added; the datastore's template is the old one.
    Adding,
    /// The template is the new one; the old password's keys are being removed.
    Removing,
}

/// A password change under way, its templates' secrets opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rekey {
    pub datastore: u64,
    pub old_template: String,
    pub new_template: String,
    pub phase: RekeyPhase,
    pub started_at: i64,
}

impl State {
    /// Records that datastore `id`'s password changes from its current template's to
    /// `new_template`'s. Refused while another change of it is under way.
    pub fn begin_rekey(&mut self, id: u64, new_template: &str, now: i64) -> Result<(), StateError> {
        if self.rekey(id)?.is_some() {
            return Err(self.invalid(format!(
                "a password change of datastore {id} is under way; it is completed by the next run (or: backupjob datastore update {id} with the same template)"
            )));
        }
        let old = self
            .stored_template(id)?
            .ok_or_else(|| self.invalid(format!("there is no datastore {id}")))?;
        let new = self
            .seal
            .seal_template(new_template)
            .map_err(|m| self.invalid(m.0))?;
        self.conn
            .execute(
                "INSERT INTO rekeys (datastore_id, old_template, new_template, phase, started_at)
                 VALUES (?1, ?2, ?3, 'ADDING', ?4)",
                params![id as i64, old, new, now],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Every repository opens with the new password: the datastore's template becomes the
    /// new one (its name with it) and the change moves on to removing the old keys, at once.
    pub fn switch_rekey(&mut self, id: u64, name: &str) -> Result<(), StateError> {
        let path = self.path.clone();
        let err = |e| StateError::Sqlite {
            path: path.clone(),
            source: e,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let n = tx
            .execute(
                "UPDATE datastores SET template = (SELECT new_template FROM rekeys WHERE datastore_id = ?1),
                 name = ?2 WHERE id = ?1 AND remote = 0
                 AND template = (SELECT old_template FROM rekeys WHERE datastore_id = ?1 AND phase = 'ADDING')",
                params![id as i64, name],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StateError::Invalid {
                        path: path.clone(),
                        message: format!("a datastore or remote named {name:?} already exists"),
                    }
                }
                e => err(e),
            })?;
        if n == 1 {
            tx.execute(
                "UPDATE rekeys SET phase = 'REMOVING' WHERE datastore_id = ?1",
                params![id as i64],
            )
            .map_err(err)?;
        } else {
            let phase: Option<String> = tx
                .query_row(
                    "SELECT phase FROM rekeys WHERE datastore_id = ?1",
                    params![id as i64],
                    |r| r.get(0),
                )
                .optional()
                .map_err(err)?;
            // Already switched (an earlier attempt): nothing to do. Otherwise the datastore's
            // template is no longer the one the change began from: it is not overwritten.
            if phase.as_deref() != Some("REMOVING") {
                return Err(StateError::Invalid {
                    path: path.clone(),
                    message: format!(
                        "datastore {id}'s template changed since its password change began; the change is not applied (datastore abort-rekey {id})"
                    ),
                });
            }
        }
        tx.commit().map_err(err)
    }

    /// Gives up a password change that has not switched the template yet (phase ADDING): the
    /// keys already added for the new password stay, harmless; the template keeps the old.
    /// One that switched must be completed (its old keys are partly gone).
    pub fn abort_rekey(&mut self, id: u64) -> Result<(), StateError> {
        match self.rekey(id)? {
            None => Err(self.invalid(format!(
                "datastore {id} has no password change under way"
            ))),
            Some(r) if r.phase == RekeyPhase::Removing => Err(self.invalid(format!(
                "datastore {id}'s new password is already its template's; the change can only be completed (backupjob datastore update {id} with the same template)"
            ))),
            Some(_) => self.end_rekey(id),
        }
    }

    /// The change of datastore `id` is complete.
    pub fn end_rekey(&mut self, id: u64) -> Result<(), StateError> {
        self.conn
            .execute(
                "DELETE FROM rekeys WHERE datastore_id = ?1",
                params![id as i64],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The password change of datastore `id` under way, if any.
    pub fn rekey(&self, id: u64) -> Result<Option<Rekey>, StateError> {
        Ok(self.rekeys()?.into_iter().find(|r| r.datastore == id))
    }

    /// Every password change under way.
    pub fn rekeys(&self) -> Result<Vec<Rekey>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT datastore_id, old_template, new_template, phase, started_at FROM rekeys
                 ORDER BY datastore_id",
            )
            .map_err(|e| self.sql(e))?;
        let rows: Vec<(i64, String, String, String, i64)> = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(|e| self.sql(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.sql(e))?;
        rows.into_iter()
            .map(|(id, old, new, phase, started_at)| {
                let open = |t: &str| {
                    self.seal
                        .open_template(t)
                        .map_err(|m| self.invalid(format!("datastore {id}: {}", m.0)))
                };
                Ok(Rekey {
                    datastore: id as u64,
                    old_template: open(&old)?,
                    new_template: open(&new)?,
                    phase: if phase == "REMOVING" {
                        RekeyPhase::Removing
                    } else {
                        RekeyPhase::Adding
                    },
                    started_at,
                })
            })
            .collect()
    }

    /// Replaces a datastore's template (its name with it) when its password stays.
    pub fn update_datastore(
        &mut self,
        id: u64,
        name: &str,
        template: &str,
    ) -> Result<(), StateError> {
        self.update_site(id, name, template, false)
    }

    /// A datastore's template as stored (secrets sealed).
    fn stored_template(&self, id: u64) -> Result<Option<String>, StateError> {
        self.conn
            .query_row(
                "SELECT template FROM datastores WHERE id = ?1 AND remote = 0",
                params![id as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))
    }
}
