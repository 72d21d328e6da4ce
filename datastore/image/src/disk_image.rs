//! Opening a disk image through qemu without letting qemu guess anything.
//!
//! A guest writes whatever it likes into its disk, and a VM owner uploads whatever image they
//! like. If qemu is asked to open a file without being told its format, it probes the first
//! sectors: a raw disk whose guest wrote a qcow2 header there is then read as qcow2, and qemu
//! follows the backing file that header names (another tenant's disk, oneadmin's keys, a
//! `json:` or `nbd:` target). So (see `docs/security.md`):
//!
//! - the format always comes from the caller (the VM's `DISK/DRIVER`, else its `FORMAT`), and
//!   `raw` means raw bytes, whatever they look like;
//! - for a qcow2 image the backing chain is read one layer at a time with
//!   `qemu-img info -f <format>` (which never opens a backing file), every backing file is
//!   checked against a policy ([`Backing`]), and its format must be recorded in the header;
//! - the image is then opened by a `json:` specification that names every layer, its format
//!   and file, and ends the chain with `"backing": null`, so qemu opens exactly the files that
//!   were checked and nothing else;
//! - qcow2 images with an external data file are refused (the header names the file);
//! - a qcow2 file a repository held (a stock increment, a download) is checked the same way
//!   before qemu opens it for anything but `info` ([`check_foreign`]).

use crate::{Error, ErrorKind};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The image formats backstop opens. Anything else is refused by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    /// `raw` or `qcow2` (as OpenNebula writes DRIVER and FORMAT, case-insensitive).
    pub fn parse(text: &str) -> Option<Format> {
        match text.trim().to_ascii_lowercase().as_str() {
            "raw" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a qcow2 image's backing file may be.
#[derive(Debug, Clone, Copy)]
pub enum Backing<'a> {
    /// Followed, but every backing file must lie (symlinks resolved) under one of these
    /// directories.
    Within(&'a [PathBuf]),
    /// None allowed: an image with a backing file is refused.
    Refused,
    /// Not followed: the image is opened alone (a delta whose clusters are the point).
    Detached,
}

/// A persistent dirty bitmap of a qcow2 image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    pub name: String,
    /// `auto` (it records writes), `in-use` (the image was not closed cleanly: inconsistent).
    pub flags: Vec<String>,
}

impl Bitmap {
    /// A bitmap that recorded every write since it was made: enabled and closed cleanly.
    pub fn consistent(&self) -> bool {
        self.flags.iter().any(|f| f == "auto") && !self.flags.iter().any(|f| f == "in-use")
    }
}

/// One file of an image's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Absolute, symlinks resolved: the file qemu is given.
    pub path: PathBuf,
    pub format: Format,
}

/// An image whose chain was checked: what qemu may open, top layer first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskImage {
    pub layers: Vec<Layer>,
    pub virtual_size: u64,
    /// The top layer's persistent bitmaps (qcow2 only).
    pub bitmaps: Vec<Bitmap>,
}

fn refuse(message: String) -> Error {
    Error::new(ErrorKind::Input, message)
}

/// What `qemu-img info -f <format>` says of one file (it never opens the backing file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub virtual_size: u64,
    /// As the header writes it, and as qemu resolves it against the image's directory.
    pub backing: Option<(String, String)>,
    /// The backing file's format, when the header records it.
    pub backing_format: Option<String>,
    pub data_file: Option<String>,
    pub bitmaps: Vec<Bitmap>,
}

/// Parses `qemu-img info --output=json` of one image.
pub fn parse_info(text: &str) -> Result<Info, Error> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| refuse(e.to_string()))?;
    let virtual_size = v["virtual-size"]
        .as_u64()
        .ok_or_else(|| refuse("no virtual-size".into()))?;
    let backing = v["backing-filename"].as_str().map(|b| {
        (
            b.to_string(),
            v["full-backing-filename"].as_str().unwrap_or(b).to_string(),
        )
    });
    let data = &v["format-specific"]["data"];
    let bitmaps = data["bitmaps"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| {
                    Some(Bitmap {
                        name: b["name"].as_str()?.to_string(),
                        flags: b["flags"]
                            .as_array()
                            .map(|f| {
                                f.iter()
                                    .filter_map(|x| x.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Info {
        virtual_size,
        backing,
        backing_format: v["backing-filename-format"].as_str().map(str::to_string),
        data_file: data["data-file"].as_str().map(str::to_string),
        bitmaps,
    })
}

/// `qemu-img info -f <format> -U` of one file.
pub fn info(path: &Path, format: Format) -> Result<Info, Error> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U", "-f", format.as_str()])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("cannot run qemu-img", e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(refuse(format!(
            "qemu-img info of {} as {format}: {}",
            path.display(),
            err.lines().next().unwrap_or("no message").trim()
        )));
    }
    parse_info(&String::from_utf8_lossy(&out.stdout)).map_err(|e| {
        refuse(format!(
            "qemu-img info of {}: {}",
            path.display(),
            e.message
        ))
    })
}

/// Whether qemu would read a backing file name as something other than a plain file: a
/// `json:` specification or a protocol prefix (`nbd:`, `rbd:`, `http://`, ...: a colon before
/// the first slash).
pub fn is_protocol(name: &str) -> bool {
    let head = name.split('/').next().unwrap_or_default();
    name.starts_with("json:") || head.contains(':')
}

/// Whether `path` (symlinks resolved) lies under one of `roots` (symlinks resolved).
pub fn within(path: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|r| {
        std::fs::canonicalize(r)
            .map(|r| path.starts_with(r))
            .unwrap_or(false)
    })
}

/// Refuses an image whose header names an external data file: qemu opens that file, to read
/// and write, whenever it opens the image for anything but `info`. `subject` names the file
/// `info` is of.
fn no_data_file(info: &Info, subject: &str) -> Result<(), Error> {
    match &info.data_file {
        Some(df) => Err(refuse(format!(
            "{subject} uses the external data file {df:?}, which backstop does not open"
        ))),
        None => Ok(()),
    }
}

/// The refusal of a backing file that is not a plain file, named by `prefix` (the image asked
/// for and a colon, or nothing) and the layer `at` that names it.
fn not_plain(prefix: &str, named: &str, at: &Path) -> Error {
    refuse(format!(
        "{prefix}the backing file {named:?} of {} is not a plain file; it is not read",
        at.display()
    ))
}

/// What the backing file name of a qcow2 file from outside backstop may be. Either way it is
/// never opened: the caller replaces or detaches it with `rebase -u` before qemu opens the
/// file for anything but `info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignBacking {
    /// Any name, a protocol's included: a stock increment names the qemu-nbd export it was
    /// staged through (`nbd+unix:///?socket=...`), and is rebased onto the file before it.
    AnyName,
    /// A plain path only: a download stands alone, and a `json:` specification or a protocol
    /// there is refused.
    PlainPath,
}

/// Checks a qcow2 file whose bytes came from outside backstop (a file of a repository, which
/// whoever can write the repository wrote: a stock increment, a download) before qemu opens it
/// for anything but `info`. An external data file (which qemu opens, to read and write, with
/// the image) is refused; its backing file name is checked against `backing`.
pub fn check_foreign(path: &Path, backing: ForeignBacking) -> Result<Info, Error> {
    let info = info(path, Format::Qcow2)?;
    no_data_file(&info, &path.display().to_string())?;
    if let Some((named, resolved)) = &info.backing
        && backing == ForeignBacking::PlainPath
        && (is_protocol(named) || is_protocol(resolved))
    {
        return Err(not_plain("", named, path));
    }
    Ok(info)
}

/// Reads the chain of `path` (declared `format`) and checks it against `backing`. Errors name
/// the image and the offending backing file in one line.
pub fn inspect(path: &Path, format: Format, backing: Backing<'_>) -> Result<DiskImage, Error> {
    // qemu resolves a relative backing name against the directory of the image as it was
    // named (a symlink's own directory), so each layer is asked about under that name; the
    // checks and the json specification use the resolved file.
    let named_top = std::path::absolute(path)
        .map_err(|e| Error::io(format!("cannot find {}", path.display()), e))?;
    let top = std::fs::canonicalize(&named_top)
        .map_err(|e| Error::io(format!("cannot find {}", path.display()), e))?;
    let first = info(&named_top, format)?;
    let mut image = DiskImage {
        layers: vec![Layer {
            path: top.clone(),
            format,
        }],
        virtual_size: first.virtual_size,
        bitmaps: if format == Format::Qcow2 {
            first.bitmaps.clone()
        } else {
            Vec::new()
        },
    };
    if format == Format::Raw {
        return Ok(image);
    }
    let mut current = first;
    let mut at = named_top;
    loop {
        no_data_file(&current, &format!("{}: {}", path.display(), at.display()))?;
        let Some((named, resolved)) = current.backing.clone() else {
            return Ok(image);
        };
        let roots = match backing {
            Backing::Detached => return Ok(image),
            Backing::Refused => {
                return Err(refuse(format!(
                    "{}: {} has the backing file {named:?}, and this image must stand alone",
                    path.display(),
                    at.display()
                )));
            }
            Backing::Within(roots) => roots,
        };
        let outside = || {
            refuse(format!(
                "{}: the backing file {named:?} of {} is outside the VM's and the datastores' directories; it is not read",
                path.display(),
                at.display()
            ))
        };
        if is_protocol(&named) || is_protocol(&resolved) || !resolved.starts_with('/') {
            return Err(not_plain(&format!("{}: ", path.display()), &named, &at));
        }
        let resolved = beside_the_file(&named, &resolved, &at);
        let next = std::fs::canonicalize(&resolved).map_err(|e| {
            Error::io(
                format!(
                    "{}: the backing file {named:?} of {}",
                    path.display(),
                    at.display()
                ),
                e,
            )
        })?;
        if !within(&next, roots) {
            return Err(outside());
        }
        if image.layers.iter().any(|l| l.path == next) || image.layers.len() > 64 {
            return Err(refuse(format!(
                "{}: the backing chain loops or is deeper than 64 files at {}",
                path.display(),
                at.display()
            )));
        }
        let fmt = current
            .backing_format
            .as_deref()
            .ok_or_else(|| {
                refuse(format!(
                    "{}: {} names the backing file {named:?} without its format (qemu would guess it); record it with qemu-img rebase -u -F <format>",
                    path.display(),
                    at.display()
                ))
            })
            .and_then(|f| {
                Format::parse(f).ok_or_else(|| {
                    refuse(format!(
                        "{}: the backing file {named:?} of {} is {f}, which backstop does not open",
                        path.display(),
                        at.display()
                    ))
                })
            })?;
        current = info(Path::new(&resolved), fmt)?;
        image.layers.push(Layer {
            path: next,
            format: fmt,
        });
        if fmt == Format::Raw {
            return Ok(image);
        }
        at = PathBuf::from(resolved);
    }
}

/// Where a relative backing name leads when it is not where qemu looks. qemu resolves it next
/// to the image as it was named; the `local` TM's disk snapshots (OpenNebula 7.4's Ruby
/// snap_create) name the file before them by its bare name in the snapshot directory
/// (`disk.0.snap/1` backed by `0`) and reach the top through a link (`disk.0 ->
/// disk.0.snap/1`), so next to the link the name leads nowhere. (The shared and qcow2 TMs store
/// `disk.0.snap/0`, which resolves beside the link through their `disk.0.snap/disk.0.snap -> .`
/// link.) Then, and only when nothing at all is where qemu looks, the name is taken next to the
/// file the link leads to; the caller checks the result like any other backing file (within the
/// VM's and datastores' directories).
fn beside_the_file(named: &str, resolved: &str, at: &Path) -> String {
    let nothing_there = std::fs::symlink_metadata(resolved)
        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
    if named.starts_with('/') || !nothing_there {
        return resolved.to_string();
    }
    let Some(dir) = std::fs::canonicalize(at)
        .ok()
        .and_then(|real| real.parent().map(Path::to_path_buf))
    else {
        return resolved.to_string();
    };
    let beside = dir.join(named);
    if std::fs::symlink_metadata(&beside).is_ok() {
        beside.display().to_string()
    } else {
        resolved.to_string()
    }
}

impl DiskImage {
    /// The top layer's file.
    pub fn path(&self) -> &Path {
        &self.layers[0].path
    }

    pub fn format(&self) -> Format {
        self.layers[0].format
    }

    /// The image as one qemu `json:` filename: every layer with its driver and file, the
    /// chain closed with `"backing": null`. `locking` false opens the files without qemu's
    /// image lock (a file a running VM holds open but no longer writes).
    pub fn json_spec(&self, locking: bool) -> String {
        let mut node = serde_json::Value::Null;
        for layer in self.layers.iter().rev() {
            let mut file = serde_json::json!({
                "driver": "file",
                "filename": layer.path.display().to_string(),
            });
            if !locking {
                file["locking"] = serde_json::Value::from("off");
            }
            let mut this = serde_json::json!({ "driver": layer.format.as_str(), "file": file });
            if layer.format == Format::Qcow2 {
                this["backing"] = node;
            }
            node = this;
        }
        format!("json:{node}")
    }
}

/// Runs qemu-img; its stdout, or an error naming the subcommand and qemu-img's first line.
pub fn qemu_img(args: &[&std::ffi::OsStr]) -> Result<String, Error> {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| Error::io("cannot run qemu-img", e))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(Error::new(
        ErrorKind::Input,
        format!(
            "qemu-img {} failed: {}",
            args.first()
                .map(|a| a.to_string_lossy())
                .unwrap_or_default(),
            err.lines().next().unwrap_or("no message").trim()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_named_not_guessed() {
        assert_eq!(Format::parse("QCOW2"), Some(Format::Qcow2));
        assert_eq!(Format::parse(" raw "), Some(Format::Raw));
        for other in ["", "vmdk", "qcow", "raw,qcow2"] {
            assert_eq!(Format::parse(other), None, "{other}");
        }
    }

    #[test]
    fn protocols_and_json_are_not_files() {
        for (name, protocol) in [
            ("/var/lib/one/datastores/1/abc", false),
            ("disk.0.snap/0", false),
            ("../1/abc", false),
            ("a/b:c", false),
            ("json:{\"driver\":\"raw\"}", true),
            ("nbd:unix:/tmp/s", true),
            ("nbd+unix:///x?socket=/s", true),
            ("http://10.0.0.1/x", true),
            ("rbd:pool/img", true),
            ("file:/etc/passwd", true),
        ] {
            assert_eq!(is_protocol(name), protocol, "{name}");
        }
    }

    #[test]
    fn info_with_backing_and_bitmaps() {
        let text = r#"{"virtual-size": 52428800, "filename": "d", "format": "qcow2",
            "backing-filename": "base", "full-backing-filename": "/v/base",
            "backing-filename-format": "raw",
            "format-specific": {"type": "qcow2", "data": {"compat": "1.1",
            "bitmaps": [{"flags": ["auto"], "name": "one-22-3", "granularity": 65536},
                        {"flags": ["in-use", "auto"], "name": "one-22-2", "granularity": 65536},
                        {"flags": [], "name": "other", "granularity": 65536}]}}}"#;
        let i = parse_info(text).expect("parse");
        assert_eq!(i.virtual_size, 52428800);
        assert_eq!(i.backing, Some(("base".into(), "/v/base".into())));
        assert_eq!(i.backing_format.as_deref(), Some("raw"));
        assert_eq!(i.data_file, None);
        let c: Vec<(&str, bool)> = i
            .bitmaps
            .iter()
            .map(|b| (b.name.as_str(), b.consistent()))
            .collect();
        assert_eq!(
            c,
            [("one-22-3", true), ("one-22-2", false), ("other", false)]
        );
        let raw = parse_info(r#"{"virtual-size": 1024, "format": "raw"}"#).expect("raw");
        assert!(raw.bitmaps.is_empty() && raw.backing.is_none());
        let df = parse_info(
            r#"{"virtual-size": 1, "format-specific": {"data": {"data-file": "/etc/shadow"}}}"#,
        )
        .expect("data file");
        assert_eq!(df.data_file.as_deref(), Some("/etc/shadow"));
        assert!(parse_info("{}").is_err());
    }

    #[test]
    fn json_spec_names_every_layer_and_ends_the_chain() {
        let image = DiskImage {
            layers: vec![
                Layer {
                    path: "/v/22/disk.0".into(),
                    format: Format::Qcow2,
                },
                Layer {
                    path: "/d/1/base".into(),
                    format: Format::Qcow2,
                },
            ],
            virtual_size: 1,
            bitmaps: Vec::new(),
        };
        let spec = image.json_spec(false);
        let v: serde_json::Value =
            serde_json::from_str(spec.strip_prefix("json:").expect("json:")).expect("json");
        assert_eq!(v["driver"], "qcow2");
        assert_eq!(v["file"]["filename"], "/v/22/disk.0");
        assert_eq!(v["file"]["locking"], "off");
        assert_eq!(v["backing"]["file"]["filename"], "/d/1/base");
        assert!(v["backing"]["backing"].is_null());
        let raw = DiskImage {
            layers: vec![Layer {
                path: "/v/22/disk.1".into(),
                format: Format::Raw,
            }],
            virtual_size: 1,
            bitmaps: Vec::new(),
        };
        let v: serde_json::Value =
            serde_json::from_str(raw.json_spec(true).strip_prefix("json:").expect("json:"))
                .expect("json");
        assert_eq!(v["driver"], "raw");
        assert!(v.get("backing").is_none() && v["file"].get("locking").is_none());
    }
}
