//! Running a step on another machine (a hypervisor, a bridge, the backup server): the ssh
//! command every hop uses, shell quoting for the remote command line, the framed request a
//! host step reads on its stdin (closing it cancels), the confinement prefix of a host step,
//! and the progress lines a host step reports.
//!
//! ssh runs with `BatchMode=yes` and no shared connections (as the stock drivers); the
//! front-end's agent goes along only where a step needs it ([`Agent`], see
//! `docs/security.md`). A host that is this machine (`localhost`, a loopback address, this
//! machine's name) runs the step with `sh -c`, without ssh.

use crate::args::BackupArgs;
use crate::config::{DriverConfig, datastore_number};
use crate::message::{Datastore, Vm};
use crate::{Error, ErrorKind};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Quotes a word for the remote shell ssh hands the command line to.
pub fn sh_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The host (or bridge) the work runs on.
pub fn target_host(args: &BackupArgs, vm: Option<&Vm>) -> String {
    vm.and_then(|v| v.backup_config.last_bridge.clone())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| args.host_dir.host.clone())
}

/// Whether a hop forwards the front-end's ssh agent. Only a host step that itself opens SFTP
/// to the backup server with the agent's keys needs it; every other hop goes without, so a
/// host (or a backup server) never holds a usable agent it does not need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    Forward,
    NotForwarded,
}

/// `ssh` with the installation's configuration (`SSH_CONFIG`) that never prompts: what
/// every ssh command backstop runs starts with.
fn ssh_batch(cfg: &DriverConfig) -> Command {
    let mut cmd = Command::new("ssh");
    if let Some(c) = &cfg.ssh_config {
        cmd.arg("-F").arg(c);
    }
    cmd.args(["-o", "BatchMode=yes"]);
    cmd
}

/// A command that runs a shell line on `host`: `sh -c` when the host is this machine,
/// otherwise ssh. ssh options every hop uses: never prompt, no shared connections (as the
/// stock drivers); the agent only with [`Agent::Forward`].
pub fn ssh_command(cfg: &DriverConfig, host: &str, agent: Agent) -> Command {
    if is_this_machine(host) {
        // An all-in-one installation: the host is the front-end itself; no ssh to it.
        let mut cmd = Command::new("sh");
        cmd.arg("-c");
        return cmd;
    }
    let mut cmd = ssh_batch(cfg);
    cmd.args([
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPath=none",
        "-o",
        if agent == Agent::Forward {
            "ForwardAgent=yes"
        } else {
            "ForwardAgent=no"
        },
        "-o",
        "ConnectTimeout=30",
        "--",
        host,
    ]);
    cmd
}

/// How the host step is confined (the stock driver's `cmd_confinement`), from the
/// datastore's attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confinement {
    pub nice: Option<i64>,
    pub ionice: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub memory_max_mb: Option<i64>,
    pub max_riops: Option<i64>,
    pub max_wiops: Option<i64>,
}

impl Confinement {
    /// Reads and checks `RESTIC_NICE`, `RESTIC_IONICE`, `RESTIC_CPU_QUOTA`,
    /// `RESTIC_MEMORY_MAX_MB`, `RESTIC_MAX_RIOPS` and `RESTIC_MAX_WIOPS`.
    pub fn of(ds: &Datastore) -> Result<Confinement, Error> {
        let n = |name: &str, range| datastore_number(ds, name, range);
        Ok(Confinement {
            nice: n("RESTIC_NICE", -20..=19)?,
            ionice: n("RESTIC_IONICE", 0..=7)?,
            cpu_quota: n("RESTIC_CPU_QUOTA", 1..=100_000)?,
            memory_max_mb: n("RESTIC_MEMORY_MAX_MB", 1..=16_777_216)?,
            max_riops: n("RESTIC_MAX_RIOPS", 1..=10_000_000)?,
            max_wiops: n("RESTIC_MAX_WIOPS", 1..=10_000_000)?,
        })
    }
}

/// The shell prefix that confines the host step (driver contract §10.3), from the datastore's
/// `RESTIC_MAX_RIOPS`, `RESTIC_MAX_WIOPS`, `RESTIC_CPU_QUOTA` (percent), `RESTIC_MEMORY_MAX_MB`
/// (a systemd user slice `backup.<ds_id>.slice` shared by all backups to the datastore, as the
/// stock drivers use; its limits are set as runtime properties), or else `RESTIC_NICE` and
/// `RESTIC_IONICE` (`nice`, `ionice -c2`). Empty when none is set.
pub fn confinement(ds: &Datastore, vm_dir: &str) -> Result<String, Error> {
    let c = Confinement::of(ds)?;
    let (riops, wiops, cpu, mem, nice, ionice) = (
        c.max_riops,
        c.max_wiops,
        c.cpu_quota,
        c.memory_max_mb,
        c.nice,
        c.ionice,
    );
    if riops.is_some() || wiops.is_some() || cpu.is_some() || mem.is_some() {
        let slice = format!("backup.{}.slice", ds.id);
        let mut props = Vec::new();
        if let Some(c) = cpu {
            props.push(format!("CPUQuota={c}%"));
        }
        if let Some(m) = mem {
            props.push(format!("MemoryMax={m}M"));
        }
        if let Some(r) = riops {
            props.push(format!("IOReadIOPSMax={vm_dir} {r}"));
        }
        if let Some(w) = wiops {
            props.push(format!("IOWriteIOPSMax={vm_dir} {w}"));
        }
        let props: Vec<String> = props.iter().map(|p| sh_quote(p)).collect();
        return Ok(format!(
            "systemctl --user set-property --runtime {slice} {} && exec systemd-run --user --quiet --pipe --collect --wait --slice={slice} ",
            props.join(" ")
        ));
    }
    let mut prefix = String::new();
    if let Some(n) = nice {
        prefix.push_str(&format!("nice -n {n} "));
    }
    if let Some(n) = ionice {
        prefix.push_str(&format!("ionice -c2 -n{n} "));
    }
    Ok(prefix)
}

/// Whether `host` names this machine: `localhost`, a loopback address literal, or this
/// machine's own host name. Steps for it run here, without ssh.
pub fn is_this_machine(host: &str) -> bool {
    let host = host.rsplit('@').next().unwrap_or(host);
    matches!(host, "localhost" | "127.0.0.1" | "::1")
        || rustix::system::uname().nodename().to_str() == Ok(host)
}

/// The first line the front-end sends the host step, before the XML.
const REQUEST_HEADER: &str = "BACKSTOP-REQUEST";

/// Sends `request` framed as [`read_request`] reads it.
pub fn write_request(to: &mut impl Write, request: &[u8]) -> std::io::Result<()> {
    to.write_all(format!("{REQUEST_HEADER} {}\n", request.len()).as_bytes())?;
    to.write_all(request)?;
    to.flush()
}

/// [`ssh_command`] to a remote host as the master of a private connection at `control` (a
/// socket in a directory only this user can enter), so that [`ssh_forward_command`] can add
/// forwards to it later. Not persistent: the master ends with its own session, and its
/// forwards with it, even when the process that started it is killed (its stdin closes).
pub fn ssh_master_command(cfg: &DriverConfig, host: &str, control: &Path) -> Command {
    let mut cmd = ssh_batch(cfg);
    cmd.args(["-o", "ControlMaster=yes", "-o", "ControlPersist=no"]);
    cmd.arg("-o")
        .arg(format!("ControlPath={}", control.display()));
    cmd.args([
        "-o",
        "ForwardAgent=no",
        "-o",
        "ConnectTimeout=30",
        "-o",
        "ServerAliveInterval=15",
        "--",
        host,
    ]);
    cmd
}

/// Asks the master at `control` ([`ssh_master_command`]) to forward each local unix socket
/// to the remote one (`-O forward -L <local>:<remote>`, OpenSSH's stream-local forwarding).
/// The paths must hold no `:` (ssh's separator), which the caller checks.
pub fn ssh_forward_command(
    cfg: &DriverConfig,
    host: &str,
    control: &Path,
    forwards: &[(PathBuf, String)],
) -> Command {
    let mut cmd = ssh_batch(cfg);
    // ssh expands `${VAR}` in forwarded socket paths from its environment: this one gets none
    // but what finding its configuration takes (it talks only to the master, no agent).
    cmd.env_clear();
    for keep in ["HOME", "PATH", "USER", "LOGNAME"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.arg("-o")
        .arg(format!("ControlPath={}", control.display()));
    cmd.args(["-O", "forward"]);
    for (local, remote) in forwards {
        cmd.arg("-L").arg(format!("{}:{remote}", local.display()));
    }
    cmd.args(["--", host]);
    cmd
}

/// How long the front-end waits for the host to stop after a cancel before it kills ssh.
const CANCEL_GRACE: Duration = Duration::from_secs(120);

/// Runs `line` on `host` over ssh with `request` sent as the framed request on its stdin, and
/// waits. A cancel closes the host's stdin (the host step stops cleanly), then kills ssh after a
/// grace period. Returns the exit status, stdout and stderr.
pub fn remote_call(
    cfg: &DriverConfig,
    host: &str,
    line: &str,
    request: &[u8],
    cancel: &Arc<AtomicBool>,
) -> Result<(std::process::ExitStatus, String, String), Error> {
    remote_call_with(cfg, host, Agent::NotForwarded, line, request, cancel, None)
}

/// The prefix of the host step's progress lines on stderr (`--progress`).
pub const PROGRESS_PREFIX: &str = "backstop-progress";

/// Set by the job runner for the backup action: a file the action keeps the host step's latest
/// progress in (`<done> <total> <read>`, bytes), replaced atomically.
pub const PROGRESS_ENV: &str = "BACKSTOP_PROGRESS_FILE";

/// [`remote_call`]; with `progress`, the host's progress lines are taken out of its stderr and
/// the latest is kept in that file.
pub fn remote_call_with(
    cfg: &DriverConfig,
    host: &str,
    agent: Agent,
    line: &str,
    request: &[u8],
    cancel: &Arc<AtomicBool>,
    progress: Option<&Path>,
) -> Result<(std::process::ExitStatus, String, String), Error> {
    let mut child = ssh_command(cfg, host, agent)
        .arg(line)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("cannot run ssh", e))?;
    let mut stdin = child.stdin.take();
    if let Some(s) = stdin.as_mut() {
        // A host that is gone shows up below as ssh's own error; a write error here says less.
        let _ = write_request(s, request);
    }
    let out = child.stdout.take().map(collect);
    let err = match progress {
        None => child.stderr.take().map(collect),
        Some(file) => child
            .stderr
            .take()
            .map(|r| collect_progress(r, file.to_path_buf())),
    };

    let mut cancelled_at: Option<Instant> = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(Error::io("cannot wait for ssh", e)),
        }
        if cancel.load(Ordering::SeqCst) {
            match cancelled_at {
                None => {
                    // End of file on the host's stdin: it stops and leaves things consistent.
                    drop(stdin.take());
                    cancelled_at = Some(Instant::now());
                }
                Some(t) if t.elapsed() > CANCEL_GRACE => {
                    let _ = child.kill();
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    let stdout = out.map(join).unwrap_or_default();
    let stderr = err.map(join).unwrap_or_default();
    Ok((status, stdout, stderr))
}

/// Collects stderr but for the progress lines, whose latest it writes to `file` (a temporary
/// name, then a rename, so a reader never sees half a line).
fn collect_progress(
    r: impl Read + Send + 'static,
    file: PathBuf,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        use std::io::BufRead;
        let tmp = file.with_extension("partial");
        let mut kept = String::new();
        let mut r = r;
        // A progress line a second is a few MB a day: past 256 MiB (or a line without end)
        // the stream is only drained.
        for line in std::io::BufReader::new((&mut r).take(256 << 20)).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line);
            match text.strip_prefix(PROGRESS_PREFIX) {
                Some(rest) if std::fs::write(&tmp, rest.trim().as_bytes()).is_ok() => {
                    let _ = std::fs::rename(&tmp, &file);
                }
                Some(_) => {}
                None if (kept.len() as u64) < MAX_REMOTE_OUTPUT => {
                    kept.push_str(&text);
                    kept.push('\n');
                }
                None => {}
            }
        }
        let _ = std::io::copy(&mut r, &mut std::io::sink());
        kept
    })
}

/// The most kept of a remote step's stdout or stderr; the rest is read and dropped, so a
/// host or proxy that prints without end cannot fill this machine's memory.
const MAX_REMOTE_OUTPUT: u64 = 1 << 20;

fn collect(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut r).take(MAX_REMOTE_OUTPUT).read_to_end(&mut buf);
        let _ = std::io::copy(&mut r, &mut std::io::sink());
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn join(h: std::thread::JoinHandle<String>) -> String {
    h.join().unwrap_or_default()
}

/// The last non-empty line, without the `<action>: ` prefix a backstop error line carries.
pub fn last_line(text: &str) -> Option<String> {
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    Some(
        [
            "host-backup: ",
            "host-pull: ",
            "host-export: ",
            "host-tm: ",
            "host-restore: ",
        ]
        .iter()
        .find_map(|p| line.strip_prefix(p))
        .unwrap_or(line)
        .to_string(),
    )
}

/// Reads the request the front-end sent: a header line with the length, then the XML. The rest
/// of stdin is watched in the background: end of file means the front-end is gone or cancels.
pub fn read_request(
    stdin: impl Read + Send + 'static,
    cancel: &Arc<AtomicBool>,
) -> Result<Vec<u8>, Error> {
    let mut reader = std::io::BufReader::new(stdin);
    let mut header = String::new();
    std::io::BufRead::read_line(&mut reader, &mut header)
        .map_err(|e| Error::io("cannot read the request", e))?;
    let len: usize = header
        .trim_end()
        .strip_prefix(REQUEST_HEADER)
        .and_then(|n| n.trim().parse().ok())
        .filter(|n| *n <= 64 << 20)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Input,
                "a host step reads its request from the front-end's backup action, not from a terminal",
            )
        })?;
    let mut xml = vec![0u8; len];
    reader
        .read_exact(&mut xml)
        .map_err(|e| Error::io("cannot read the request", e))?;
    let flag = cancel.clone();
    std::thread::spawn(move || {
        let mut sink = [0u8; 256];
        loop {
            match reader.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        flag.store(true, Ordering::SeqCst);
    });
    Ok(xml)
}

/// Characters that would change meaning inside downloader.sh's `eval "command=..."`.
pub fn shell_safe(url: &str) -> Result<(), Error> {
    match url
        .chars()
        .find(|c| matches!(c, '"' | '$' | '`' | '\\' | '\'') || c.is_control())
    {
        Some(c) => Err(Error::new(
            ErrorKind::Input,
            format!("backup URL {url:?} holds {c:?}, which downloader.sh cannot pass through eval"),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds_with(attrs: &str) -> Datastore {
        let xml = format!(
            "<DATASTORE><ID>100</ID><DS_MAD>backstop</DS_MAD><BASE_PATH>/b</BASE_PATH>\
             <TEMPLATE>{attrs}</TEMPLATE></DATASTORE>"
        );
        let root = crate::xml::Element::parse(&xml).expect("xml");
        Datastore::from_xml(&root).expect("datastore")
    }

    #[test]
    fn confinement_prefixes() {
        let vm_dir = "/var/lib/one//datastores/0/22";
        assert_eq!(confinement(&ds_with(""), vm_dir).expect("none"), "");
        assert_eq!(
            confinement(
                &ds_with("<RESTIC_NICE>10</RESTIC_NICE><RESTIC_IONICE>6</RESTIC_IONICE>"),
                vm_dir
            )
            .expect("nice"),
            "nice -n 10 ionice -c2 -n6 "
        );
        assert_eq!(
            confinement(
                &ds_with(
                    "<RESTIC_CPU_QUOTA>50</RESTIC_CPU_QUOTA><RESTIC_MAX_RIOPS>300</RESTIC_MAX_RIOPS>\
                     <RESTIC_NICE>10</RESTIC_NICE>"
                ),
                vm_dir
            )
            .expect("systemd"),
            "systemctl --user set-property --runtime backup.100.slice 'CPUQuota=50%' \
             'IOReadIOPSMax=/var/lib/one//datastores/0/22 300' && exec systemd-run --user --quiet \
             --pipe --collect --wait --slice=backup.100.slice "
        );
        for bad in [
            "<RESTIC_NICE>99</RESTIC_NICE>",
            "<RESTIC_IONICE>x</RESTIC_IONICE>",
            "<RESTIC_MEMORY_MAX_MB>0</RESTIC_MEMORY_MAX_MB>",
        ] {
            let e = confinement(&ds_with(bad), vm_dir).expect_err(bad);
            assert!(e.to_string().starts_with("datastore 100: RESTIC_"), "{e}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("/var/tmp/one"), "/var/tmp/one");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("$(x)"), "'$(x)'");
    }
    #[test]
    fn urls_that_eval_would_mangle_are_refused() {
        assert!(shell_safe("backstop://100//0:a1b2c3d4/var/lib/one/22/backup/disk.0.0").is_ok());
        for bad in ["x$(id)", "x`id`", "x\"y", "x\\y", "x'y", "x\ny"] {
            assert!(shell_safe(bad).is_err(), "{bad}");
        }
    }
}
