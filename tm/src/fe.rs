//! The front-end half of prebackup and postbackup: what `remotes/tm/<tm>/<action>` runs when
//! one_vmm_exec calls it (argv `host:vm_dir disk_ids deploy_id bj_id vm_id sys_ds_id`, the VM
//! document on stdin). It runs `backstop host-tm <action>` on the host over ssh, with the VM
//! document sent on ssh's stdin (closing it cancels), and passes the host's `INFO:` lines on.
//!
//! prebackup asks oned for the backup datastore (`BACKUP_CONFIG/LAST_DATASTORE_ID`): its
//! RESTIC_NICE, RESTIC_IONICE and systemd limits confine the host step, as they confine the
//! backup's. Direct or staging ([`Delivery`]): `TM_DELIVERY` in backstop.conf; `auto` hands
//! over directly when that datastore's `backup` action is backstop's, in the stock layout
//! otherwise (or when oned cannot be asked, which is logged).

use crate::{Error, ErrorKind};
use backstop_protocol::args::BackupArgs;
use backstop_protocol::config::{Delivery, DriverConfig};
use backstop_protocol::message::{Datastore, Vm};
use backstop_protocol::oned::OnedClient;
use backstop_protocol::output::{Level, log};
use backstop_protocol::remote::{confinement, last_line, remote_call, sh_quote};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// The backup datastore from oned (`BACKUP_CONFIG/LAST_DATASTORE_ID`), for prebackup's
/// hand-over and confinement; None, logged, when oned cannot be asked.
fn backup_datastore(vm: &Vm) -> Option<Datastore> {
    let ds_id = vm.backup_config.last_datastore_id?;
    match OnedClient::from_env().and_then(|c| c.datastore(ds_id)) {
        Ok(ds) => Some(ds),
        Err(e) => {
            log(
                Level::Info,
                &format!(
                    "VM {}: the backup datastore could not be asked ({e}); prebackup runs without its confinement",
                    vm.id
                ),
            );
            None
        }
    }
}

/// Whether prebackup hands the disks over directly, given the backup datastore if known.
pub fn direct(cfg: &DriverConfig, ds: Option<&Datastore>) -> bool {
    match cfg.tm_delivery {
        Delivery::Direct => true,
        Delivery::Staging => false,
        Delivery::Auto => ds.is_some_and(|ds| {
            let action = cfg.remotes.join(format!("datastore/{}/backup", ds.ds_mad));
            std::fs::read_to_string(&action).is_ok_and(|t| t.contains("backstop-shim"))
        }),
    }
}

/// Checks a backup datastore's attributes before prebackup touches the VM: the binary passes
/// the datastore driver's own check, so that a datastore the backup would refuse is refused
/// before a VM is frozen or its disks staged.
pub type CheckDatastore<'a> = &'a dyn Fn(&Datastore) -> Result<(), Error>;

/// Runs `action` (`prebackup` or `postbackup`) on the host.
pub fn run(
    action: &str,
    (args, vm, raw_xml): (&BackupArgs, &Vm, &[u8]),
    cfg: &DriverConfig,
    check: CheckDatastore<'_>,
    cancel: &Arc<AtomicBool>,
) -> Result<(), Error> {
    let staging = cfg.staging_dir(&args.host_dir.vm_dir, args.vm_id);
    let pre = action.starts_with("prebackup");
    let ds = if pre { backup_datastore(vm) } else { None };
    let delivery = if pre && direct(cfg, ds.as_ref()) {
        "direct"
    } else {
        "staging"
    };
    // The qemu work runs under the backup datastore's confinement, as the stock driver's
    // (driver contract §4.1, §10.3).
    let prefix = match &ds {
        Some(ds) => {
            check(ds)?;
            confinement(ds, &args.host_dir.vm_dir)?
        }
        None => String::new(),
    };
    let mut words = vec![
        cfg.remote_binary(),
        "host-tm".to_string(),
        action.to_string(),
        "--staging".to_string(),
        staging,
        "--delivery".to_string(),
        delivery.to_string(),
        "--".to_string(),
    ];
    words.extend(args.to_argv());
    words.iter_mut().for_each(|w| *w = sh_quote(w));
    let line = format!("{prefix}{}", words.join(" "));
    let (status, _stdout, stderr) = remote_call(cfg, &args.host_dir.host, &line, raw_xml, cancel)?;
    // The host's log lines reach oned's log.
    for line in stderr.lines() {
        for level in ["INFO: ", "ERROR: "] {
            if let Some(msg) = line.strip_prefix(level) {
                log(
                    if level == "INFO: " {
                        Level::Info
                    } else {
                        Level::Error
                    },
                    msg,
                );
            }
        }
    }
    if cancel.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(Error::new(
            ErrorKind::Cancelled,
            format!("{action} of VM {} was cancelled", args.vm_id),
        ));
    }
    if !status.success() {
        let reason = last_line(
            &stderr
                .lines()
                .filter(|l| !l.starts_with("INFO: "))
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .unwrap_or_else(|| format!("ssh exited with {status}"));
        return Err(Error::new(
            ErrorKind::Input,
            format!(
                "Error preparing disk files: {action} of VM {} on {}: {reason}",
                args.vm_id, args.host_dir.host
            ),
        ));
    }
    Ok(())
}
