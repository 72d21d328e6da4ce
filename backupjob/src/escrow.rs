//! A datastore's BACKSTOP_ESCROW_RECIPIENTS given to the repositories it has already
//! (docs/escrow.md): new repositories get their escrow key when a backup or a sync makes
//! them, existing ones at their next backup, or all at once here.

use crate::Error;
use crate::error::input;
use crate::runner::Env;
use crate::state::State;
use backstop_datastore::config::DriverConfig;
use backstop_datastore::target::{self, RepoTarget};
use backstop_protocol::message::Datastore;

/// What giving a datastore's repositories their escrow key did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Escrowed {
    pub repositories: usize,
    pub added: usize,
}

impl std::fmt::Display for Escrowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "escrow keys added to {} of {} repositories (the others had one)",
            self.added, self.repositories
        )
    }
}

/// Gives every repository of `ds` an escrow key sealed to its BACKSTOP_ESCROW_RECIPIENTS
/// unless it has one. Every repository is tried; those that failed are the error, each with
/// why (the keys added to the others stay: an escrow key more is harmless).
pub fn ensure_all(env: &Env, ds: &Datastore) -> Result<Escrowed, Error> {
    let cfg = DriverConfig::load(&env.remotes)?;
    let repos = target::repositories(ds, &cfg)?;
    let mut done = Escrowed {
        repositories: repos.len(),
        added: 0,
    };
    let mut failed = Vec::new();
    for repo in repos {
        let added = RepoTarget::new(ds, repo.clone())
            .and_then(|t| t.storage(ds, &cfg))
            .and_then(|storage| target::ensure_escrow(ds, &storage, None));
        match added {
            Ok(true) => done.added += 1,
            Ok(false) => {}
            Err(e) => failed.push(format!("repository {repo}: {}", e.message)),
        }
    }
    if !failed.is_empty() {
        return Err(Error::Refused(format!(
            "datastore {}: {done}, but not to {}: {}",
            ds.id,
            failed.len(),
            failed.join("; ")
        )));
    }
    Ok(done)
}

/// `datastore escrow ID`: the runner's datastore `id` (from its template in the state).
pub fn datastore(env: &Env, st: &State, id: u64) -> Result<Escrowed, Error> {
    let named = st
        .datastores()?
        .into_iter()
        .find(|d| d.id == id)
        .ok_or_else(|| input(format!("there is no datastore {id}")))?;
    if crate::oned::is_oned(&named.template) {
        return Err(input(format!(
            "datastore {id} is oned's: its repositories get their escrow key at their next backup once its template has BACKSTOP_ESCROW_RECIPIENTS, or now with backstop repo escrow add"
        )));
    }
    let (_, ds) = crate::rekey::parsed(env, id, &named.template)?;
    let wanted = backstop_datastore::settings::Settings::of(&ds)?.escrow;
    if wanted.is_none() {
        return Err(input(format!(
            "datastore {id} has no BACKSTOP_ESCROW_RECIPIENTS: add the age public keys with datastore update {id} FILE --append"
        )));
    }
    ensure_all(env, &ds)
}
