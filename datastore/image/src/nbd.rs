//! Reading disk images over NBD: a minimal client for a qemu-nbd export on a unix socket, and
//! qcow2 (or any qemu format) images exported by a qemu-nbd process this module starts and
//! stops by its PID.
//!
//! The client speaks the fixed-newstyle handshake, `NBD_OPT_GO` on the default export, and
//! simple replies to `NBD_CMD_READ` (no structured replies: extents come from `nbdinfo --json
//! --map`, which qemu documents and the tests use as the reference).

use crate::disk_image::DiskImage;
use crate::image::{
    Extent, ImageSource, parse_allocation_map, parse_dirty_map, parse_qemu_img_present,
};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const INFO_EXPORT: u16 = 0;
const CMD_READ: u16 = 0;
const CMD_DISC: u16 = 2;

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_u16(s: &mut impl Read) -> io::Result<u16> {
    let mut b = [0u8; 2];
    s.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32(s: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(s: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// One connection to an NBD export.
#[derive(Debug)]
pub struct NbdClient {
    stream: UnixStream,
    size: u64,
    next_handle: u64,
}

/// How long an NBD server (or nbdinfo asking one) may take to answer before the read fails.
const SERVER_TIMEOUT: Duration = Duration::from_secs(600);

/// The largest extent map read from `nbdinfo --json --map` (a map this size lists millions of
/// extents; a server that sends more is refused, not held in memory).
const MAX_MAP: u64 = 256 << 20;

impl NbdClient {
    /// Connects to the default export of the server at `socket`.
    pub fn connect(socket: &Path) -> io::Result<NbdClient> {
        Self::connect_export(socket, "")
    }

    /// Connects to the export `name` of the server at `socket` (libvirt names a pull-mode
    /// backup's exports after the disk targets: `vda`, ...).
    pub fn connect_export(socket: &Path, name: &str) -> io::Result<NbdClient> {
        let mut s = UnixStream::connect(socket)?;
        // A server that stops answering (a host in pull mode, through a forward) fails the
        // read instead of holding the backup forever.
        s.set_read_timeout(Some(SERVER_TIMEOUT))?;
        if read_u64(&mut s)? != NBDMAGIC || read_u64(&mut s)? != IHAVEOPT {
            return Err(bad(format!(
                "{} is not a newstyle NBD server",
                socket.display()
            )));
        }
        let server_flags = read_u16(&mut s)?;
        if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(bad("the NBD server does not speak fixed newstyle"));
        }
        let client_flags = u32::from(FLAG_FIXED_NEWSTYLE | (server_flags & FLAG_NO_ZEROES));
        s.write_all(&client_flags.to_be_bytes())?;
        // NBD_OPT_GO: the export name, no information requests.
        let name_len = u32::try_from(name.len()).map_err(|_| bad("NBD export name too long"))?;
        let mut opt = Vec::new();
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&OPT_GO.to_be_bytes());
        opt.extend_from_slice(&(6 + name_len).to_be_bytes());
        opt.extend_from_slice(&name_len.to_be_bytes());
        opt.extend_from_slice(name.as_bytes());
        opt.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&opt)?;
        let mut size = None;
        loop {
            if read_u64(&mut s)? != OPT_REPLY_MAGIC {
                return Err(bad("bad NBD option reply"));
            }
            let _option = read_u32(&mut s)?;
            let reply = read_u32(&mut s)?;
            let len = read_u32(&mut s)? as usize;
            if len > 1 << 20 {
                return Err(bad("NBD option reply too long"));
            }
            let mut data = vec![0u8; len];
            s.read_exact(&mut data)?;
            if reply & 0x8000_0000 != 0 {
                return Err(bad(format!(
                    "the NBD server refused the export: {}",
                    String::from_utf8_lossy(&data)
                )));
            }
            match reply {
                REP_INFO
                    if data.len() >= 12
                        && u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT =>
                {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&data[2..10]);
                    size = Some(u64::from_be_bytes(b));
                }
                REP_ACK => break,
                _ => {}
            }
        }
        let size = size.ok_or_else(|| bad("the NBD server did not send the export size"))?;
        Ok(NbdClient {
            stream: s,
            size,
            next_handle: 1,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    fn request(&mut self, kind: u16, offset: u64, length: u32) -> io::Result<u64> {
        let handle = self.next_handle;
        self.next_handle += 1;
        let mut req = Vec::with_capacity(28);
        req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&kind.to_be_bytes());
        req.extend_from_slice(&handle.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&length.to_be_bytes());
        self.stream.write_all(&req)?;
        Ok(handle)
    }

    /// Reads exactly `buf.len()` bytes at `offset` (at most 32 MiB per call).
    pub fn read(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = u32::try_from(buf.len()).map_err(|_| bad("NBD read too large"))?;
        let handle = self.request(CMD_READ, offset, len)?;
        if read_u32(&mut self.stream)? != SIMPLE_REPLY_MAGIC {
            return Err(bad("bad NBD reply"));
        }
        let error = read_u32(&mut self.stream)?;
        if read_u64(&mut self.stream)? != handle {
            return Err(bad("NBD reply for another request"));
        }
        if error != 0 {
            return Err(io::Error::other(format!(
                "the NBD server failed a read at {offset} (error {error})"
            )));
        }
        self.stream.read_exact(buf)
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        let _ = self.request(CMD_DISC, 0, 0);
    }
}

/// qemu's name for a qcow2 delta opened without its backing file (and without qemu's image
/// lock when `locking` is false).
fn delta_spec(delta: &Path, locking: bool) -> io::Result<String> {
    let path = std::path::absolute(delta)?;
    let mut file = serde_json::json!({"driver": "file", "filename": path.display().to_string()});
    if !locking {
        file["locking"] = serde_json::Value::from("off");
    }
    let spec = serde_json::json!({
        "driver": "qcow2",
        "file": file,
        "backing": null,
    });
    Ok(format!("json:{spec}"))
}

/// The clusters a qcow2 delta holds itself, from `qemu-img map`.
pub fn delta_extents(delta: &Path) -> io::Result<Vec<Extent>> {
    layer_extents(delta, true)
}

/// The clusters a qcow2 file holds itself (its backing file not opened); `locking` false for
/// a file a running VM holds open but no longer writes (the layer under a new snapshot
/// overlay).
pub fn layer_extents(delta: &Path, locking: bool) -> io::Result<Vec<Extent>> {
    let out = Command::new("qemu-img")
        .args(["map", "--output=json"])
        .arg(delta_spec(delta, locking)?)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run qemu-img: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "qemu-img map failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8(out.stdout)
        .map_err(|_| bad("qemu-img printed something that is not UTF-8"))?;
    parse_qemu_img_present(&text).map_err(|e| bad(e.message))
}

/// A qemu-nbd process exporting one image read-only on a private unix socket. Stopped by its
/// PID, and its socket directory removed, when dropped.
///
/// It is not `--persistent`: it exits when its last client goes, and this export keeps one
/// client connected for its whole life. So if the process that started it dies (even by
/// SIGKILL), qemu-nbd follows at once instead of serving the disk forever.
#[derive(Debug)]
pub struct QemuNbdExport {
    child: Child,
    /// The socket's directory (in the temporary directory).
    dir: PathBuf,
    /// The owner record's directory (in [`exports_dir`]).
    record: PathBuf,
    socket: PathBuf,
    _keeper: Option<NbdClient>,
}

impl QemuNbdExport {
    /// Exports a checked image ([`DiskImage`]: every layer named with its format, so qemu
    /// probes nothing and follows no backing file of its own choosing), with the persistent
    /// dirty bitmap `bitmap` visible as the `qemu:dirty-bitmap:<bitmap>` context. `locking`
    /// false skips qemu's image lock: for a file a running VM holds open but no longer writes
    /// (the base under a live snapshot's overlay).
    pub fn start_image(
        image: &DiskImage,
        bitmap: Option<&str>,
        locking: bool,
    ) -> io::Result<QemuNbdExport> {
        Self::start_spec(
            std::ffi::OsStr::new(&image.json_spec(locking)),
            bitmap,
            image.path(),
        )
    }

    /// Exports an RBD image (at its snapshot) through qemu's rbd driver, read-only.
    pub fn start_rbd(image: &crate::rbd::RbdImage) -> io::Result<QemuNbdExport> {
        // Also refuses a key file path with a blank, which CEPH_ARGS would split, and cluster
        // files that are not root's.
        image.check_on_host()?;
        Self::start_spec_env(
            std::ffi::OsStr::new(&image.json_spec()),
            None,
            Path::new(&image.spec()),
            image.ceph_args().map(|a| ("CEPH_ARGS", a)),
        )
    }

    /// Exports a qcow2 delta without its backing file (`"backing": null`): clusters it does
    /// not hold read as zeros and show as holes.
    pub fn start_delta(delta: &Path) -> io::Result<QemuNbdExport> {
        let path = std::path::absolute(delta)?;
        let spec = serde_json::json!({
            "driver": "qcow2",
            "file": {"driver": "file", "filename": path.display().to_string()},
            "backing": null,
        });
        Self::start_spec(std::ffi::OsStr::new(&format!("json:{spec}")), None, delta)
    }

    fn start_spec(
        spec: &std::ffi::OsStr,
        bitmap: Option<&str>,
        image: &Path,
    ) -> io::Result<QemuNbdExport> {
        Self::start_spec_env(spec, bitmap, image, None)
    }

    fn start_spec_env(
        spec: &std::ffi::OsStr,
        bitmap: Option<&str>,
        image: &Path,
        env: Option<(&str, String)>,
    ) -> io::Result<QemuNbdExport> {
        let mut random = [0u8; 6];
        getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
        let name = hex::encode(random);
        // The owner record in this user's private directory: it decides what a later step
        // signals (see reap_stale_exports).
        let record = exports_dir()?.join(format!("{EXPORT_PREFIX}{name}"));
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&record)?;
        // The socket in a directory of its own in the temporary directory: a unix socket's
        // path has at most 107 bytes, which a home directory's path would eat. Made here,
        // exclusively and 0700, so no other user can enter it, and the temporary directory
        // is sticky, so none can replace it; the record names it.
        let dir = std::env::temp_dir().join(format!("{SOCKET_PREFIX}{name}"));
        if let Err(e) =
            std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
                .create(&dir)
        {
            let _ = std::fs::remove_dir_all(&record);
            return Err(io::Error::new(
                e.kind(),
                format!("cannot make {}: {e}", dir.display()),
            ));
        }
        let socket = dir.join("nbd.sock");
        let owner_record = |nbd: Option<crate::process::ProcessId>| {
            let me = crate::process::ProcessId::current();
            let ids = match nbd {
                Some(n) => format!("{me} {n}"),
                None => me.to_string(),
            };
            format!("{ids}\n{}\n{}\n", image.display(), socket.display())
        };
        // Who owns the export, written before qemu-nbd exists: if this process dies between
        // starting qemu-nbd and recording its identity, the reaper still finds it by its
        // socket (reap_stale_exports).
        if let Err(e) = std::fs::write(record.join("owner"), owner_record(None)) {
            let _ = std::fs::remove_dir_all(&record);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let mut cmd = Command::new("qemu-nbd");
        cmd.arg("--read-only");
        cmd.arg(format!("--socket={}", socket.display()))
            .arg("--shared=8");
        if let Some(b) = bitmap {
            cmd.arg(format!("--bitmap={b}"));
        }
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        cmd.arg(spec)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                let _ = std::fs::remove_dir_all(&record);
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot run qemu-nbd: {e}"),
                ));
            }
        };
        // Who started whom, for reap_stale_exports (if this process dies before its keeper
        // connects, qemu-nbd would otherwise wait for a first client forever).
        let nbd_process = crate::process::ProcessId::of(child.id());
        if let Some(nbd_process) = nbd_process {
            let tmp = record.join("owner.tmp");
            let _ = std::fs::write(&tmp, owner_record(Some(nbd_process)))
                .and_then(|()| std::fs::rename(&tmp, record.join("owner")));
        }
        let mut export = QemuNbdExport {
            child,
            dir,
            record,
            socket,
            _keeper: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !export.socket.exists() {
            if let Some(status) = export.child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = export.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(io::Error::other(format!(
                    "qemu-nbd could not export {}: {} ({status})",
                    image.display(),
                    err.trim()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(
                    "qemu-nbd did not open its socket within 30 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // The socket file appears at bind(), a moment before qemu-nbd listens: a refused
        // connection then only means "not yet".
        let keeper = loop {
            match NbdClient::connect(&export.socket) {
                Ok(c) => break c,
                Err(e)
                    if e.kind() == io::ErrorKind::ConnectionRefused
                        && Instant::now() < deadline =>
                {
                    if let Some(status) = export.child.try_wait()? {
                        return Err(io::Error::other(format!(
                            "qemu-nbd could not export {}: it exited with {status}",
                            image.display()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        };
        export._keeper = Some(keeper);
        Ok(export)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn uri(&self) -> String {
        uri(&self.socket)
    }

    /// The extents that hold data (`base:allocation`).
    pub fn allocation(&self) -> io::Result<Vec<Extent>> {
        allocation(&self.socket)
    }

    /// The dirty extents of a bitmap given at start.
    pub fn dirty(&self, bitmap: &str) -> io::Result<Vec<Extent>> {
        dirty(&self.socket, bitmap)
    }
}

fn uri(socket: &Path) -> String {
    uri_of(socket, "")
}

fn uri_of(socket: &Path, export: &str) -> String {
    format!("nbd+unix:///{export}?socket={}", socket.display())
}

/// The extents that hold data in the export at `socket` (`base:allocation`).
pub fn allocation(socket: &Path) -> io::Result<Vec<Extent>> {
    allocation_of(socket, "")
}

/// [`allocation`] of a named export.
pub fn allocation_of(socket: &Path, export: &str) -> io::Result<Vec<Extent>> {
    parse_allocation_map(&map_json(socket, export, None, false)?).map_err(|e| bad(e.message))
}

/// [`allocation_of`] an export someone else serves (a host's, forwarded in pull mode): its
/// map is bounded in size and time.
fn foreign_allocation(socket: &Path, export: &str) -> io::Result<Vec<Extent>> {
    parse_allocation_map(&map_json(socket, export, None, true)?).map_err(|e| bad(e.message))
}

/// The dirty extents of `bitmap` in the export at `socket` (qemu-nbd must have been started
/// with `--bitmap=<bitmap>`).
pub fn dirty(socket: &Path, bitmap: &str) -> io::Result<Vec<Extent>> {
    dirty_of(socket, "", bitmap)
}

/// [`dirty`] of a named export (libvirt's pull-mode backup: `backup-<target>`).
pub fn dirty_of(socket: &Path, export: &str, bitmap: &str) -> io::Result<Vec<Extent>> {
    parse_dirty_map(&map_json(
        socket,
        export,
        Some(&format!("qemu:dirty-bitmap:{bitmap}")),
        false,
    )?)
    .map_err(|e| bad(e.message))
}

/// `nbdinfo --json --map[=<context>]` of an export; `foreign`: a server someone else runs,
/// whose answer is bounded in size and time.
fn map_json(
    socket: &Path,
    export: &str,
    context: Option<&str>,
    foreign: bool,
) -> io::Result<String> {
    let mut cmd = Command::new("nbdinfo");
    cmd.arg("--json");
    match context {
        Some(c) => cmd.arg(format!("--map={c}")),
        None => cmd.arg("--map"),
    };
    cmd.arg(uri_of(socket, export));
    let out = if foreign {
        crate::process::output_bounded(&mut cmd, "nbdinfo", MAX_MAP, SERVER_TIMEOUT)?
    } else {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run nbdinfo: {e}")))?;
        crate::process::BoundedOutput {
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        }
    };
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "nbdinfo failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    String::from_utf8(out.stdout).map_err(|_| bad("nbdinfo printed something that is not UTF-8"))
}

/// What an export's record directory is called in [`exports_dir`].
const EXPORT_PREFIX: &str = "export-";

/// What an export's socket directory is called in the temporary directory.
const SOCKET_PREFIX: &str = "backstop-nbd-";

/// The largest owner record read (two process identities and a path).
const MAX_RECORD: u64 = 64 << 10;

/// This user's private directory of qemu-nbd exports (sockets and owner records) on this
/// machine and in this PID namespace, made when missing: under `crate::private_dir`, never the
/// shared temporary directory. Named per machine, so that a home directory several hosts
/// share never shows one host's live exports to another's reaper as stale.
pub fn exports_dir() -> io::Result<PathBuf> {
    let dir = crate::private_dir::private_dir("nbd")?.join(format!(
        "{}-{}",
        crate::process::machine_name(),
        crate::process::pid_namespace()
    ));
    crate::private_dir::ensure_private(&dir)?;
    Ok(dir)
}

/// What [`reap_stale_exports`] did.
#[derive(Debug, Default)]
pub struct Reaped {
    /// Export directories removed.
    pub removed: usize,
    /// Records that failed a check and were left alone, each said in one line.
    pub left: Vec<String>,
}

/// Stops the qemu-nbd processes that backstop processes which are gone left behind (killed
/// before their exports closed), and removes their socket directories. Each export records
/// its owner's and qemu-nbd's process identity ([`crate::process::ProcessId`]); an export is
/// stale when its owner no longer runs, and its qemu-nbd is signalled only if it is still that
/// very process and is the qemu-nbd serving that export's own socket. A record that fails a
/// check is left alone and reported.
pub fn reap_stale_exports() -> Reaped {
    let mut done = Reaped::default();
    let dir = match exports_dir() {
        Ok(d) => d,
        Err(e) => {
            done.left.push(format!("no export was reaped: {e}"));
            return done;
        }
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return done;
    };
    let me = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(EXPORT_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let ours = std::fs::symlink_metadata(&dir)
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == me && m.file_type().is_dir());
        if !ours {
            done.left.push(format!(
                "left {}: not a directory of this user's",
                dir.display()
            ));
            continue;
        }
        let Some(record) = read_record(&dir.join("owner")) else {
            // None yet: an export being set up right now writes it next.
            if std::fs::symlink_metadata(dir.join("owner")).is_ok() {
                done.left.push(format!(
                    "left {}: its owner record is not a readable file",
                    dir.display()
                ));
            }
            continue;
        };
        let ids: Vec<crate::process::ProcessId> = record
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(crate::process::ProcessId::parse)
            .collect();
        let (owner, nbd) = match ids[..] {
            [owner, nbd] => (owner, Some(nbd)),
            // The owner died before it recorded qemu-nbd's identity.
            [owner] => (owner, None),
            _ => {
                done.left.push(format!(
                    "left {}: its owner record is unreadable",
                    dir.display()
                ));
                continue;
            }
        };
        if owner.is_running() {
            continue;
        }
        // The socket the record names: a `backstop-nbd-*/nbd.sock` of this user's.
        let socket = record
            .lines()
            .nth(2)
            .map(PathBuf::from)
            .filter(|s| is_socket_path(s));
        // Only that very qemu-nbd (PID, start time, boot), never a process that reused its
        // PID, and only while it serves this export's socket; unrecorded, the one that does.
        let nbd = nbd.or_else(|| socket.as_deref().and_then(serving));
        if let Some(nbd) = nbd.filter(|n| n.is_running()) {
            if !socket.as_deref().is_some_and(|s| serves(nbd.pid, s)) {
                done.left.push(format!(
                    "left {}: its record names process {}, which is not the qemu-nbd serving that export",
                    dir.display(),
                    nbd.pid
                ));
                continue;
            }
            let _ = nbd.signal(rustix::process::Signal::TERM);
        }
        if let Some(socket_dir) = socket.as_deref().and_then(Path::parent)
            && std::fs::symlink_metadata(socket_dir).is_ok_and(|m| {
                m.file_type().is_dir() && std::os::unix::fs::MetadataExt::uid(&m) == me
            })
        {
            let _ = std::fs::remove_dir_all(socket_dir);
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            done.removed += 1;
        }
    }
    done
}

/// Whether `path` is where an export's socket goes: `<dir>/backstop-nbd-<name>/nbd.sock`.
fn is_socket_path(path: &Path) -> bool {
    path.is_absolute()
        && path.file_name().is_some_and(|n| n == "nbd.sock")
        && path
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(SOCKET_PREFIX))
        && !path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
}

/// A small record file, never read through a link.
fn read_record(path: &Path) -> Option<String> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(MAX_RECORD)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Whether process `pid` is a qemu-nbd of this user's started with `--socket=<socket>` (any
/// user can start a process with those arguments; only ours can be the export's).
fn serves(pid: u32, socket: &Path) -> bool {
    let ours = std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| {
        std::os::unix::fs::MetadataExt::uid(&m) == rustix::process::geteuid().as_raw()
    });
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if !ours {
        return false;
    }
    let arg = format!("--socket={}", socket.display());
    let mut args = cmdline.split(|b| *b == 0);
    let program = args.next().unwrap_or_default();
    let is_qemu_nbd = Path::new(std::ffi::OsStr::from_bytes(program))
        .file_name()
        .is_some_and(|n| n == "qemu-nbd");
    is_qemu_nbd && args.any(|a| a == arg.as_bytes())
}

/// The qemu-nbd process started with `--socket=<socket>` (a path unique to one export).
fn serving(socket: &Path) -> Option<crate::process::ProcessId> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| serves(*pid, socket))
        .and_then(crate::process::ProcessId::of)
}

impl Drop for QemuNbdExport {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.record);
    }
}

/// How many connections an [`NbdImage`] opens to an export someone else serves. qemu-nbd
/// (started with `--shared=8`) and libvirt's backup export (no limit) both take them.
const EXPORT_CONNECTIONS: usize = 2;

/// A disk image read through a qemu-nbd export: qcow2 files, with holes known from the
/// allocation map and never read.
#[derive(Debug)]
pub struct NbdImage {
    // Declared first: the clients disconnect before the export stops.
    /// One connection, or for an export someone else serves (reached through an ssh forward
    /// in pull mode, where each request waits a round trip) [`EXPORT_CONNECTIONS`] of them,
    /// so that the readers' requests are in flight together.
    clients: Vec<Mutex<NbdClient>>,
    /// Which connection the next reader that finds all of them busy waits for.
    next: std::sync::atomic::AtomicUsize,
    size: u64,
    allocation: Vec<Extent>,
    /// Held for its Drop: the qemu-nbd process this image started, if any.
    _export: Option<QemuNbdExport>,
    socket: PathBuf,
    /// The export's name ("" for qemu-nbd's default export).
    export: String,
    /// False for a delta read without its backing file.
    complete: bool,
}

impl NbdImage {
    /// Exports a checked image with qemu-nbd (see [`QemuNbdExport::start_image`]) and
    /// connects to it.
    pub fn open(image: &DiskImage, bitmap: Option<&str>, locking: bool) -> io::Result<NbdImage> {
        Self::over(QemuNbdExport::start_image(image, bitmap, locking)?)
    }

    /// A complete image read through an export this image owns.
    fn over(export: QemuNbdExport) -> io::Result<NbdImage> {
        let allocation = export.allocation()?;
        let client = NbdClient::connect(export.socket())?;
        Ok(NbdImage {
            size: client.size(),
            clients: vec![Mutex::new(client)],
            next: Default::default(),
            allocation,
            socket: export.socket().to_path_buf(),
            export: String::new(),
            _export: Some(export),
            complete: true,
        })
    }

    /// An RBD image at its snapshot, read through librbd; holes from its allocation map.
    pub fn open_rbd(image: &crate::rbd::RbdImage) -> io::Result<NbdImage> {
        Self::over(QemuNbdExport::start_rbd(image)?)
    }

    /// Opens a stock OpenNebula increment: a qcow2 delta whose backing file is missing.
    /// Returns the image and the extents it holds, which are the changed extents.
    pub fn open_delta(delta: &Path) -> io::Result<(NbdImage, Vec<Extent>)> {
        let present = delta_extents(delta)?;
        let export = QemuNbdExport::start_delta(delta)?;
        let client = NbdClient::connect(export.socket())?;
        let image = NbdImage {
            size: client.size(),
            clients: vec![Mutex::new(client)],
            next: Default::default(),
            allocation: Vec::new(),
            socket: export.socket().to_path_buf(),
            export: String::new(),
            _export: Some(export),
            complete: false,
        };
        Ok((image, present))
    }

    /// Connects to an export someone else runs (a qemu-nbd, qemu-storage-daemon or libvirt
    /// pull-mode backup socket).
    pub fn connect(socket: &Path) -> io::Result<NbdImage> {
        Self::connect_export(socket, "")
    }

    /// [`NbdImage::connect`] to a named export.
    pub fn connect_export(socket: &Path, export: &str) -> io::Result<NbdImage> {
        let allocation = foreign_allocation(socket, export)?;
        let mut clients = Vec::new();
        for _ in 0..EXPORT_CONNECTIONS {
            let client = NbdClient::connect_export(socket, export)?;
            if clients.first().is_some_and(|c: &Mutex<NbdClient>| {
                c.lock().is_ok_and(|c| c.size() != client.size())
            }) {
                return Err(bad("the export's connections disagree on its size"));
            }
            clients.push(Mutex::new(client));
        }
        let size = clients[0]
            .lock()
            .map_err(|_| io::Error::other("NBD client poisoned"))?
            .size();
        Ok(NbdImage {
            size,
            clients,
            next: Default::default(),
            allocation,
            _export: None,
            socket: socket.to_path_buf(),
            export: export.to_string(),
            complete: true,
        })
    }

    /// The socket of the qemu-nbd export (one this image started disappears when it is dropped).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The dirty extents of the bitmap the image was opened with.
    pub fn dirty(&self, bitmap: &str) -> io::Result<Vec<Extent>> {
        dirty_of(&self.socket, &self.export, bitmap)
    }
}

impl ImageSource for NbdImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        // A free connection if there is one, else the next in turn.
        for c in &self.clients {
            if let Ok(mut client) = c.try_lock() {
                return client.read(buf, offset);
            }
        }
        let k = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.clients.len();
        self.clients[k]
            .lock()
            .map_err(|_| io::Error::other("NBD client poisoned"))?
            .read(buf, offset)
    }

    fn data_extents(&self) -> io::Result<Option<Vec<Extent>>> {
        // A delta's holes are not zeros on the disk: they are whatever the parent held.
        Ok(self.complete.then(|| self.allocation.clone()))
    }

    fn complete(&self) -> bool {
        self.complete
    }
}

/// Whether a file is a qcow2 image (its magic is `QFI\xfb`).
pub fn is_qcow2(path: &Path) -> io::Result<bool> {
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path)?;
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"QFI\xfb"),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}
