//! Backup images and their increments, as the runs recorded them.

use super::*;

/// An increment from the columns `id, source, size_mb, kind, created_at`, starting at
/// column `at` of a row.
fn increment_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<IncrementRow> {
    Ok(IncrementRow {
        id: r.get::<_, i64>(at)? as u64,
        source: r.get(at + 1)?,
        size_mb: r.get::<_, i64>(at + 2)? as u64,
        kind: r.get(at + 3)?,
        created_at: r.get(at + 4)?,
    })
}

impl State {
    pub fn add_image(
        &mut self,
        vm: u64,
        job: Option<u64>,
        datastore: u64,
        now: i64,
    ) -> Result<u64, StateError> {
        self.conn
            .execute(
                "INSERT INTO images (vm_id, job_id, datastore_id, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![vm as i64, job.map(|j| j as i64), datastore as i64, now],
            )
            .map_err(|e| self.sql(e))?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    pub fn add_increment(
        &mut self,
        image: u64,
        id: u64,
        source: &str,
        size_mb: u64,
        kind: &str,
        now: i64,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO increments (image_id, id, source, size_mb, kind, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![image as i64, id as i64, source, size_mb as i64, kind, now],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn image(&self, id: u64) -> Result<ImageRow, StateError> {
        let (vm_id, job_id, datastore_id, protected): (i64, Option<i64>, i64, bool) = self
            .conn
            .query_row(
                "SELECT vm_id, job_id, datastore_id, protected FROM images WHERE id = ?1",
                params![id as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(|e| self.sql(e))?
            .ok_or_else(|| self.invalid(format!("no backup image {id}")))?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, source, size_mb, kind, created_at FROM increments
                 WHERE image_id = ?1 ORDER BY id",
            )
            .map_err(|e| self.sql(e))?;
        let increments = stmt
            .query_map(params![id as i64], |r| increment_row(r, 0))
            .map_err(|e| self.sql(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.sql(e))?;
        Ok(ImageRow {
            id,
            vm_id: vm_id as u64,
            job_id: job_id.map(|j| j as u64),
            datastore_id: datastore_id as u64,
            protected,
            increments,
        })
    }

    /// The backup images of a VM in a job and datastore, oldest first.
    pub fn images_of(
        &self,
        vm: u64,
        job: Option<u64>,
        datastore: u64,
    ) -> Result<Vec<u64>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id FROM images WHERE vm_id = ?1 AND job_id IS ?2 AND datastore_id = ?3
                 ORDER BY id",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(
                params![vm as i64, job.map(|j| j as i64), datastore as i64],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| self.sql(e))?;
        rows.map(|r| r.map(|v| v as u64))
            .collect::<Result<_, _>>()
            .map_err(|e| self.sql(e))
    }

    /// Marks an image protected (no retention rule removes it) or not.
    pub fn set_protected(&mut self, id: u64, protected: bool) -> Result<(), StateError> {
        let n = self
            .conn
            .execute(
                "UPDATE images SET protected = ?1 WHERE id = ?2",
                params![protected, id as i64],
            )
            .map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(self.invalid(format!("no backup image {id}")));
        }
        Ok(())
    }

    pub fn remove_image(&mut self, id: u64) -> Result<(), StateError> {
        let path = self.path.clone();
        let err = |e| StateError::Sqlite {
            path: path.clone(),
            source: e,
        };
        let tx = self.conn.transaction().map_err(err)?;
        // Its points first, while the image names their datastore (schema 14's triggers).
        tx.execute(
            "DELETE FROM increments WHERE image_id = ?1",
            params![id as i64],
        )
        .map_err(err)?;
        tx.execute("DELETE FROM images WHERE id = ?1", params![id as i64])
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// After increment_flatten: only `kept` stay; the first is the new base with `size_mb` and
    /// its (possibly new) source.
    pub fn flatten_increments(
        &mut self,
        image: u64,
        kept: &[(u64, String)],
        size_mb: u64,
    ) -> Result<(), StateError> {
        let Some((base, base_source)) = kept.first() else {
            return Ok(());
        };
        let path = self.path.clone();
        let err = |e| StateError::Sqlite {
            path: path.clone(),
            source: e,
        };
        let tx = self.conn.transaction().map_err(err)?;
        // Every increment the datastore did not keep: those before the new base, and those
        // between kept ones a retention plan removed.
        let ids: Vec<String> = kept.iter().map(|(i, _)| i.to_string()).collect();
        tx.execute(
            &format!(
                "DELETE FROM increments WHERE image_id = ?1 AND id NOT IN ({})",
                ids.join(",")
            ),
            params![image as i64],
        )
        .map_err(err)?;
        tx.execute(
            "UPDATE increments SET source = ?1, size_mb = ?2, kind = 'FULL'
             WHERE image_id = ?3 AND id = ?4",
            params![base_source, size_mb as i64, image as i64, *base as i64],
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// The chain a VM's next INCREMENT extends: its newest image and that image's last
    /// increment.
    pub fn chain_of(
        &self,
        vm: u64,
        job: Option<u64>,
        datastore: u64,
    ) -> Result<super::Chain, StateError> {
        let Some(image) = self.images_of(vm, job, datastore)?.last().copied() else {
            return Ok(super::Chain::default());
        };
        let last = self.image(image)?.increments.last().map(|i| i.id);
        Ok(super::Chain {
            image: Some(image),
            last_increment: last,
        })
    }

    /// Every backup image with its increments, in two queries (a state of 500,000
    /// increments is read in a fraction of a second; one query per image took seconds).
    pub fn all_images(&self) -> Result<Vec<ImageRow>, StateError> {
        self.images_where(None, None)
    }

    /// The images of one VM, or of one datastore, with their increments.
    pub fn images_where(
        &self,
        vm: Option<u64>,
        datastore: Option<u64>,
    ) -> Result<Vec<ImageRow>, StateError> {
        let (vm, datastore) = (vm.map(|v| v as i64), datastore.map(|d| d as i64));
        let mut images: Vec<ImageRow> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT id, vm_id, job_id, datastore_id, protected FROM images
                     WHERE (?1 IS NULL OR vm_id = ?1) AND (?2 IS NULL OR datastore_id = ?2)
                     ORDER BY id",
                )
                .map_err(|e| self.sql(e))?;
            let rows = stmt
                .query_map(params![vm, datastore], |r| {
                    Ok(ImageRow {
                        id: r.get::<_, i64>(0)? as u64,
                        vm_id: r.get::<_, i64>(1)? as u64,
                        job_id: r.get::<_, Option<i64>>(2)?.map(|j| j as u64),
                        datastore_id: r.get::<_, i64>(3)? as u64,
                        protected: r.get(4)?,
                        increments: Vec::new(),
                    })
                })
                .map_err(|e| self.sql(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))?
        };
        let at: std::collections::HashMap<u64, usize> =
            images.iter().enumerate().map(|(k, i)| (i.id, k)).collect();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT n.image_id, n.id, n.source, n.size_mb, n.kind, n.created_at
                 FROM increments n JOIN images i ON i.id = n.image_id
                 WHERE (?1 IS NULL OR i.vm_id = ?1) AND (?2 IS NULL OR i.datastore_id = ?2)
                 ORDER BY n.image_id, n.id",
            )
            .map_err(|e| self.sql(e))?;
        let mut rows = stmt
            .query(params![vm, datastore])
            .map_err(|e| self.sql(e))?;
        while let Some(r) = rows.next().map_err(|e| self.sql(e))? {
            let image = r.get::<_, i64>(0).map_err(|e| self.sql(e))? as u64;
            let Some(&k) = at.get(&image) else { continue };
            let row = increment_row(r, 1).map_err(|e| self.sql(e))?;
            images[k].increments.push(row);
        }
        Ok(images)
    }

    /// The size of datastore `datastore`'s recorded backup points by the UTC day they were
    /// taken, from `since` (epoch seconds): `(start of the day, MB added that day)`, oldest
    /// first; from the sums schema 14's triggers keep, not read point by point.
    pub fn stored_by_day(&self, datastore: u64, since: i64) -> Result<Vec<(i64, u64)>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT day, mb FROM stored_by_day WHERE datastore_id = ?1 AND day >= ?2 \
                 AND mb <> 0 ORDER BY day",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![datastore as i64, since], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Every image with what the dashboard shows of its points without reading them: how
    /// many, their summed size and the newest date (from the index schema 12 adds).
    pub fn image_summaries(&self) -> Result<Vec<ImageSummary>, StateError> {
        let mut images: Vec<ImageSummary> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT id, vm_id, job_id, datastore_id, protected FROM images ORDER BY id",
                )
                .map_err(|e| self.sql(e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(ImageSummary {
                        id: r.get::<_, i64>(0)? as u64,
                        vm_id: r.get::<_, i64>(1)? as u64,
                        job_id: r.get::<_, Option<i64>>(2)?.map(|j| j as u64),
                        datastore_id: r.get::<_, i64>(3)? as u64,
                        protected: r.get(4)?,
                        points: 0,
                        stored_mb: 0,
                        newest: None,
                    })
                })
                .map_err(|e| self.sql(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))?
        };
        let at: std::collections::HashMap<u64, usize> =
            images.iter().enumerate().map(|(k, i)| (i.id, k)).collect();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT image_id, count(*), sum(size_mb), max(created_at) FROM increments
                 INDEXED BY increments_summary GROUP BY image_id",
            )
            .map_err(|e| self.sql(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.sql(e))?;
        while let Some(r) = rows.next().map_err(|e| self.sql(e))? {
            let got = (|| -> rusqlite::Result<(i64, i64, i64, i64)> {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })()
            .map_err(|e| self.sql(e))?;
            if let Some(&k) = at.get(&(got.0 as u64)) {
                images[k].points = got.1 as u64;
                images[k].stored_mb = got.2 as u64;
                images[k].newest = Some(got.3);
            }
        }
        Ok(images)
    }

    /// The `limit` newest points of every image: (image, increment), newest first.
    pub fn recent_increments(&self, limit: usize) -> Result<Vec<(u64, IncrementRow)>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT image_id, id, source, size_mb, kind, created_at FROM increments
                 INDEXED BY increments_by_time ORDER BY created_at DESC LIMIT ?1",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![limit as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, increment_row(r, 1)?))
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }
}
