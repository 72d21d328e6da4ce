//! A datastore's new RESTIC_PASSWORD given to every repository under it (docs/rekey.md), so
//! that nothing becomes unreadable at any moment, a killed change included:
//!
//! 1. ADDING: each repository gets a key file for the new password (restic's own key
//!    format, as `restic key add` writes it), read back before the next; the datastore's
//!    template stays the old one, whose password still opens every repository.
//! 2. The template becomes the new one and the change moves to REMOVING, in one transaction:
//!    from then on the template's password is the new one, which opens every repository.
//! 3. REMOVING: each repository loses the key files the old password opens, only once one
//!    for the new password is there.
//!
//! Each step can run again: a repository that already opens with the new password gets no
//! second key, one without old keys loses none. A change a killed command left is completed by
//! the next run (engine::reconcile) or by giving the same template again.

use crate::Error;
use crate::error::input;
use crate::runner::Env;
use crate::state::{Rekey, RekeyPhase, State};
use backstop_datastore::config::DriverConfig;
use backstop_datastore::target;
use backstop_protocol::message::Datastore;

/// The attributes that say where a datastore's repositories are: a password change must not
/// move them too (the keys would be added in one place and looked for in another).
pub const LOCATION: &[&str] = &[
    "BASE_PATH",
    "RESTIC_BACKEND",
    "RESTIC_SFTP_SERVER",
    "RESTIC_SFTP_USER",
    "RESTIC_S3_ENDPOINT",
    "RESTIC_S3_BUCKET",
];

/// A datastore template as the actions see it, with the id it has.
pub fn parsed(env: &Env, id: u64, template: &str) -> Result<(String, Datastore), Error> {
    let (name, ds) = crate::model::datastore(id, template, &env.datastore_location)
        .map_err(|x| input(format!("datastore {id}: {x}")))?;
    let root = backstop_protocol::xml::Element::parse(&ds.document)
        .map_err(|x| input(format!("datastore {id}: {x}")))?;
    let parsed = Datastore::from_xml(&root).map_err(|x| input(format!("datastore {id}: {x}")))?;
    Ok((name, parsed))
}

/// What a completed step did, for the line to show.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rekeyed {
    pub repositories: usize,
    pub keys_added: usize,
    pub keys_removed: usize,
}

/// Carries datastore `id`'s password change to its end from wherever it stopped.
pub fn complete(env: &Env, st: &mut State, id: u64) -> Result<Rekeyed, Error> {
    let Some(Rekey {
        old_template,
        new_template,
        mut phase,
        ..
    }) = st.rekey(id)?
    else {
        return Ok(Rekeyed::default());
    };
    let cfg = DriverConfig::load(&env.remotes)?;
    let (_, old) = parsed(env, id, &old_template)?;
    let (name, new) = parsed(env, id, &new_template)?;
    let old_password = target::password(&old)?;
    let new_password = target::password(&new)?;
    let mut done = Rekeyed::default();
    if phase == RekeyPhase::Adding {
        let repos = target::repositories(&old, &cfg)?;
        done.repositories = repos.len();
        for repo in repos {
            // Opened with the old password when it still works (the usual case), else with
            // the new one: a repository an earlier attempt finished.
            let opened = match target::open_repo(&old, repo.clone(), &cfg) {
                Ok(r) => r,
                Err(first) => {
                    target::open_repo(&new, repo.clone(), &cfg).map_err(|_| Error::from(first))?
                }
            };
            if opened.add_password(&new_password)? {
                done.keys_added += 1;
            }
        }
        st.switch_rekey(id, &name)?;
        phase = RekeyPhase::Removing;
    }
    if phase == RekeyPhase::Removing {
        // Listed again: a repository made meanwhile with the old password (a backup that
        // began before the change) gets the new key here before it loses the old one.
        let repos = target::repositories(&new, &cfg)?;
        done.repositories = repos.len();
        for repo in repos {
            let opened = match target::open_repo(&new, repo.clone(), &cfg) {
                Ok(r) => r,
                Err(first) => {
                    let r = target::open_repo(&old, repo.clone(), &cfg)
                        .map_err(|_| Error::from(first))?;
                    if r.add_password(&new_password)? {
                        done.keys_added += 1;
                    }
                    r
                }
            };
            done.keys_removed += opened.remove_password(&old_password, &new_password)?;
        }
        st.end_rekey(id)?;
    }
    Ok(done)
}

/// Gives up datastore `id`'s change while it has not switched the template (phase ADDING):
/// from every repository the old password opens, the keys the change added for the new one
/// are removed again (the old password must still open it), so an abandoned password opens
/// nothing it was given; then the change is forgotten. Returns the keys removed and the
/// repositories that could not be opened to check (they may keep a key for the abandoned
/// password).
pub fn abort(env: &Env, st: &mut State, id: u64) -> Result<(usize, Vec<String>), Error> {
    let Some(Rekey {
        old_template,
        new_template,
        phase,
        ..
    }) = st.rekey(id)?
    else {
        return Err(input(format!(
            "datastore {id} has no password change under way"
        )));
    };
    if phase == RekeyPhase::Removing {
        st.abort_rekey(id)?; // refuses, saying why
    }
    let cfg = DriverConfig::load(&env.remotes)?;
    let (_, old) = parsed(env, id, &old_template)?;
    let (_, new) = parsed(env, id, &new_template)?;
    let old_password = target::password(&old)?;
    let new_password = target::password(&new)?;
    let mut removed = 0;
    let mut unchecked = Vec::new();
    for repo in target::repositories(&old, &cfg)? {
        match target::open_repo(&old, repo.clone(), &cfg) {
            Ok(r) => removed += r.remove_password(&new_password, &old_password)?,
            Err(e) => unchecked.push(format!("{repo} ({e})")),
        }
    }
    st.abort_rekey(id)?;
    Ok((removed, unchecked))
}

/// Completes every change a killed command left; a line per datastore (what was done, or
/// why it could not be, in which case it is tried again next time).
pub fn complete_all(env: &Env, st: &mut State) -> Vec<(u64, String)> {
    let pending = match st.rekeys() {
        Ok(p) => p,
        Err(e) => {
            return vec![(
                0,
                format!("cannot read the password changes under way: {e}"),
            )];
        }
    };
    pending
        .into_iter()
        .map(|r| {
            let line = match complete(env, st, r.datastore) {
                Ok(d) => format!(
                    "the password change left unfinished is complete ({} repositories, {} keys added, {} removed)",
                    d.repositories, d.keys_added, d.keys_removed
                ),
                Err(e) => format!("the password change left unfinished is still not complete: {e}"),
            };
            (r.datastore, line)
        })
        .collect()
}
