//! The downloader (driver contract §5.10, §7): what `downloader.sh` runs for a backup URL. It prints two
//! shell assignments, `command=` and `clean_command=`; downloader.sh `eval`s them and pipes
//! `command`'s stdout into the image datastore (`cp`) or onto the host (in-place restore).
//!
//! For a backstop snapshot, `command` runs this same downloader with `--stream`: it writes the
//! disk of the URL's last snapshot, which is already a complete image, as a standalone qcow2 on
//! stdout while reading the repository ([`crate::repo::Repo::stream_qcow2`]). No chain is
//! rebuilt and no temporary space is used, so `clean_command` is empty. A FULL backup made by
//! the stock restic driver, and a chain of stock increments (qcow2 deltas), are rebuilt as the
//! stock downloader does: every file fetched into a directory under RESTIC_TMP_DIR (on the
//! machine that runs the downloader, where the stock one uses the backup server), checked
//! (a stored qcow2 names no file of this machine: [`crate::stock_chain`]), rebased and
//! converted to one new qcow2; `command` cats it and `clean_command` removes the directory.
//! The TPM state is streamed as stored.
//!
//! Both steps read the datastore (and its decrypted password) from oned's API, as the stock
//! downloader does, so no secret appears in `command` or in any argv. The first step checks
//! everything it can (the API, the repository, the snapshot, the file) so that a bad URL fails
//! before downloader.sh starts a copy.

use crate::Error;
use crate::config::DriverConfig;
use crate::disk_source::{Source, input, resolve, write_source};
use crate::oned::OnedClient;
use crate::remote::{sh_quote, shell_safe};
use crate::settings::lock_wait;
use crate::stock_chain as chain;
use backstop_protocol::url::BackupUrl;
use std::io::Write;
use std::path::Path;

/// Step one: checks the URL end to end and returns the two lines for downloader.sh.
pub fn plan(url: &BackupUrl, downloader: &Path, cfg: &DriverConfig) -> Result<Vec<String>, Error> {
    let text = url.to_string();
    shell_safe(&text)?;
    let exe = downloader.to_str().ok_or_else(|| {
        input(format!(
            "the downloader's path {} is not UTF-8",
            downloader.display()
        ))
    })?;
    shell_safe(exe)?;
    let oned = OnedClient::from_env()?;
    let (repo, ds, source) = resolve(url, &|id| Ok(oned.datastore(id)?), cfg)?;
    if let Source::Chain { links, disk_id } = &source {
        let (dir, file) = chain::standalone(&repo, &ds, links, *disk_id)?;
        let (dir, file) = (dir.display().to_string(), file.display().to_string());
        return Ok(vec![
            format!("command=\"cat {}\"", sh_quote(&file)),
            format!("clean_command=\"rm -rf {}\"", sh_quote(&format!("{dir}/"))),
        ]);
    }
    // A conflicting lock (a prune, a check) is reported now, in one line, rather than by the
    // stream after downloader.sh has started the copy.
    drop(repo.lock(false, lock_wait(&ds))?);
    Ok(vec![
        format!("command=\"{} --stream {}\"", sh_quote(exe), sh_quote(&text)),
        "clean_command=\"\"".to_string(),
    ])
}

/// Step two (`--stream`): writes the qcow2 to `out`.
pub fn stream(url: &BackupUrl, cfg: &DriverConfig, out: &mut impl Write) -> Result<(), Error> {
    let oned = OnedClient::from_env()?;
    let (repo, ds, source) = resolve(url, &|id| Ok(oned.datastore(id)?), cfg)?;
    if let Source::Chain { .. } = source {
        return Err(input(format!(
            "backup URL {url} names a chain of qcow2 deltas: its command is `cat` of the rebuilt image, not --stream"
        )));
    }
    write_source(&repo, &ds, source, out)
}
