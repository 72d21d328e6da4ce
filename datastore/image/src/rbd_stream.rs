//! Ceph's own image streams, as the stock driver stored them (see `docs/ceph.md`): an image
//! with its snapshots from `rbd export --export-format 2` (`disk.<id>.rbd2`) and a change set
//! from `rbd export-diff` (`disk.<id>.<n>.rbdiff`, format v1 or v2), applied in order to one
//! raw image file. The result is the image at the stream's last snapshot.
//!
//! The streams come out of a repository and are read as hostile: every length is checked
//! before anything is read or allocated for it, a write or a zeroed range must lie inside
//! the image's size as last declared, and a stream that ends early, carries an unknown record
//! or has bytes after its end is refused with the byte position. Data blocks that are all
//! zeros become holes, so the file stays as sparse as the image was.

use crate::{Error, ErrorKind};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

const IMAGE_BANNER: &[u8] = b"rbd image v2\n";
const DIFFS_BANNER: &[u8] = b"rbd image diffs v2\n";
const DIFF_V1: &[u8] = b"rbd diff v1\n";
const DIFF_V2: &[u8] = b"rbd diff v2\n";
/// Larger than any RBD image (librbd's own limit is far below), small enough that a crafted
/// size cannot make a file no tool can read.
const MAX_SIZE: u64 = 1 << 50;
/// Snapshot names, image metadata: far above what Ceph writes.
const MAX_NAME: u64 = 4096;
const MAX_META: u64 = 1 << 20;
const MAX_DIFFS: u64 = 1 << 16;
const PIECE: usize = 1 << 20;

/// What applying a stream did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The image size at the end of the stream.
    pub size: u64,
    /// The snapshot the image is at after the stream: the last applied diff's `to` name;
    /// `None` when that diff ends at the image's head.
    pub to_snap: Option<String>,
    /// The snapshot a diff starts from (the first diff's `from` name).
    pub from_snap: Option<String>,
    /// Bytes of data records (zero blocks among them left as holes).
    pub data_bytes: u64,
    /// Bytes of zero records.
    pub zero_bytes: u64,
}

struct Reader<'a, R: Read> {
    input: &'a mut R,
    pos: u64,
    what: &'a str,
}

impl<R: Read> Reader<'_, R> {
    fn bad(&self, message: impl std::fmt::Display) -> Error {
        Error::new(
            ErrorKind::Stream,
            format!(
                "{} is not a valid rbd stream: {message} (at byte {})",
                self.what, self.pos
            ),
        )
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        match self.input.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(self.bad("it ends early"))
            }
            Err(e) => Err(Error::io(format!("cannot read {}", self.what), e)),
        }
    }

    fn u8(&mut self) -> Result<u8, Error> {
        let mut b = [0u8; 1];
        self.exact(&mut b)?;
        Ok(b[0])
    }

    fn u32(&mut self) -> Result<u32, Error> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn skip(&mut self, mut n: u64) -> Result<(), Error> {
        let mut sink = [0u8; 8192];
        while n > 0 {
            let step = n.min(sink.len() as u64) as usize;
            self.exact(&mut sink[..step])?;
            n -= step as u64;
        }
        Ok(())
    }

    fn name(&mut self) -> Result<String, Error> {
        let n = u64::from(self.u32()?);
        if n > MAX_NAME {
            return Err(self.bad(format!("a snapshot name of {n} bytes")));
        }
        let mut b = vec![0u8; n as usize];
        self.exact(&mut b)?;
        String::from_utf8(b).map_err(|_| self.bad("a snapshot name that is not UTF-8"))
    }

    fn at_end(&mut self) -> Result<(), Error> {
        let mut b = [0u8; 1];
        match self.input.read(&mut b) {
            Ok(0) => Ok(()),
            Ok(_) => Err(self.bad("bytes after its end record")),
            Err(e) => Err(Error::io(format!("cannot read {}", self.what), e)),
        }
    }
}

/// Applies the stream on `input` (an export v2 or a diff v1/v2, told by its banner) to the raw
/// image `target`, whose length it sets. `what` names the stream in errors.
pub fn apply(input: &mut impl Read, target: &File, what: &str) -> Result<Applied, Error> {
    apply_until(input, target, what, None)
}

/// As [`apply`], but an export v2 stops at snapshot `until` when it holds it: `rbd export
/// --export-format 2` writes every snapshot of the image and then its head, whatever snapshot
/// was named, and a backup's point is its snapshot, not the head at export time. The rest of
/// the stream is still read and checked.
pub fn apply_until(
    input: &mut impl Read,
    target: &File,
    what: &str,
    until: Option<&str>,
) -> Result<Applied, Error> {
    let mut r = Reader {
        input,
        pos: 0,
        what,
    };
    let mut banner = [0u8; 12];
    r.exact(&mut banner)?;
    let mut applied = Applied::default();
    if banner == IMAGE_BANNER[..12] {
        if r.u8()? != b'\n' {
            return Err(r.bad("an unknown banner"));
        }
        image_v2(&mut r, target, until, &mut applied)?;
    } else if banner == DIFF_V1 || banner == DIFF_V2 {
        diff(&mut r, Some(target), banner == DIFF_V2, &mut applied)?;
    } else {
        return Err(r.bad("an unknown banner (not an rbd export v2 or an rbd diff)"));
    }
    r.at_end()?;
    Ok(applied)
}

/// `rbd export --export-format 2`: metadata records up to `E`, then the image's diffs (each
/// snapshot from the one before, then the head), each a diff v2 with its own banner.
fn image_v2<R: Read>(
    r: &mut Reader<'_, R>,
    target: &File,
    until: Option<&str>,
    applied: &mut Applied,
) -> Result<(), Error> {
    loop {
        let tag = r.u8()?;
        if tag == b'E' {
            break;
        }
        // Order, format, features, striping, image-meta: nothing a raw image keeps.
        let len = r.u64()?;
        if len > MAX_META {
            return Err(r.bad(format!(
                "a metadata record {:?} of {len} bytes",
                tag as char
            )));
        }
        r.skip(len)?;
    }
    let mut banner = [0u8; DIFFS_BANNER.len()];
    r.exact(&mut banner)?;
    if banner != DIFFS_BANNER {
        return Err(r.bad("no diffs banner after the metadata"));
    }
    let count = r.u64()?;
    if count == 0 || count > MAX_DIFFS {
        return Err(r.bad(format!("{count} diffs")));
    }
    let mut done = false;
    for _ in 0..count {
        let mut banner = [0u8; 12];
        r.exact(&mut banner)?;
        if banner != DIFF_V2 {
            return Err(r.bad("a diff without its banner"));
        }
        if done {
            diff(r, None, true, &mut Applied::default())?;
            continue;
        }
        diff(r, Some(target), true, applied)?;
        // The image stream starts from nothing; the diffs' own `from` names are internal.
        applied.from_snap = None;
        done = until.is_some() && applied.to_snap.as_deref() == until;
    }
    Ok(())
}

/// One diff; with no `target`, read and checked only.
fn diff<R: Read>(
    r: &mut Reader<'_, R>,
    target: Option<&File>,
    v2: bool,
    applied: &mut Applied,
) -> Result<(), Error> {
    let mut size: Option<u64> = None;
    let mut to = None;
    loop {
        let tag = r.u8()?;
        if tag == b'e' {
            applied.to_snap = to;
            return Ok(());
        }
        // v2 records carry their length; ours are checked by their own fields instead
        // (Ceph writes 8 for the one-byte protection record).
        let len = if v2 { Some(r.u64()?) } else { None };
        match tag {
            b'f' => {
                let name = r.name()?;
                applied.from_snap.get_or_insert(name);
            }
            b't' => to = Some(r.name()?),
            b's' => {
                let s = r.u64()?;
                if s > MAX_SIZE {
                    return Err(r.bad(format!("an image size of {s} bytes")));
                }
                if let Some(target) = target {
                    target.set_len(s).map_err(|e| {
                        Error::io(format!("cannot size the image rebuilt from {}", r.what), e)
                    })?;
                }
                size = Some(s);
                applied.size = s;
            }
            b'p' if v2 => {
                r.u8()?;
            }
            b'w' | b'z' => {
                let offset = r.u64()?;
                let length = r.u64()?;
                let Some(end) = offset
                    .checked_add(length)
                    .filter(|e| size.is_some_and(|s| *e <= s))
                else {
                    return Err(r.bad(format!(
                        "a {} record at {offset}+{length} outside the image's size {size:?}",
                        if tag == b'w' { "data" } else { "zero" }
                    )));
                };
                match (tag, target) {
                    (b'w', Some(target)) => write_data(r, target, offset, length)?,
                    (b'w', None) => r.skip(length)?,
                    (_, Some(target)) => zero(target, offset, end - offset)
                        .map_err(|e| Error::io(format!("cannot apply {}", r.what), e))?,
                    _ => {}
                }
                if tag == b'w' {
                    applied.data_bytes += length;
                } else {
                    applied.zero_bytes += length;
                }
            }
            other => match len {
                // v2 lets a reader skip what it does not know.
                Some(n) if n <= MAX_META => r.skip(n)?,
                _ => return Err(r.bad(format!("an unknown record {:?}", other as char))),
            },
        }
    }
}

fn write_data<R: Read>(
    r: &mut Reader<'_, R>,
    target: &File,
    mut offset: u64,
    mut length: u64,
) -> Result<(), Error> {
    let mut buf = vec![0u8; PIECE.min(length as usize)];
    while length > 0 {
        let step = length.min(buf.len() as u64) as usize;
        r.exact(&mut buf[..step])?;
        let piece = &buf[..step];
        let written = if piece.iter().all(|b| *b == 0) {
            zero(target, offset, step as u64)
        } else {
            target.write_all_at(piece, offset)
        };
        written.map_err(|e| Error::io(format!("cannot apply {}", r.what), e))?;
        offset += step as u64;
        length -= step as u64;
    }
    Ok(())
}

/// Zeros a range: a hole where the file system can punch one, written zeros elsewhere.
fn zero(target: &File, offset: u64, length: u64) -> std::io::Result<()> {
    use rustix::fs::{FallocateFlags, fallocate};
    if length == 0 {
        return Ok(());
    }
    match fallocate(
        target,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        length,
    ) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP) => {
            let zeros = vec![0u8; PIECE.min(length as usize)];
            let (mut at, end) = (offset, offset + length);
            while at < end {
                let step = (end - at).min(zeros.len() as u64) as usize;
                target.write_all_at(&zeros[..step], at)?;
                at += step as u64;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff_v1(records: &[u8]) -> Vec<u8> {
        let mut out = DIFF_V1.to_vec();
        out.extend_from_slice(records);
        out
    }

    fn size(s: u64) -> Vec<u8> {
        let mut r = vec![b's'];
        r.extend_from_slice(&s.to_le_bytes());
        r
    }

    fn write(offset: u64, data: &[u8]) -> Vec<u8> {
        let mut r = vec![b'w'];
        r.extend_from_slice(&offset.to_le_bytes());
        r.extend_from_slice(&(data.len() as u64).to_le_bytes());
        r.extend_from_slice(data);
        r
    }

    fn run(stream: &[u8], file: &File) -> Result<Applied, Error> {
        apply(&mut &stream[..], file, "disk.0.1.rbdiff")
    }

    #[test]
    fn a_v1_diff_sizes_writes_and_zeros() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("img"))
            .expect("create");
        file.write_all_at(&[7u8; 64], 0).expect("seed");
        let mut rec = size(8192);
        rec.extend(write(100, b"hello"));
        rec.extend(
            [b'z']
                .iter()
                .chain(&10u64.to_le_bytes())
                .chain(&20u64.to_le_bytes()),
        );
        rec.push(b'e');
        let applied = run(&diff_v1(&rec), &file).expect("apply");
        assert_eq!(applied.size, 8192);
        assert_eq!((applied.data_bytes, applied.zero_bytes), (5, 20));
        let mut got = vec![0u8; 8192];
        file.read_exact_at(&mut got, 0).expect("read");
        let mut want = vec![0u8; 8192];
        want[..64].fill(7);
        want[10..30].fill(0);
        want[100..105].copy_from_slice(b"hello");
        assert_eq!(got, want);
    }

    #[test]
    fn hostile_streams_are_refused_with_their_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = File::create(dir.path().join("img")).expect("create");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"qcow2 or anything".to_vec(), "unknown banner"),
            (diff_v1(&size(4096)), "ends early"),
            (
                diff_v1(&[size(4096), write(4000, &[1u8; 200])].concat()),
                "outside",
            ),
            (diff_v1(&write(0, b"x")), "outside"),
            (diff_v1(&size(u64::MAX)), "image size"),
            (diff_v1(&[b'f', 0xff, 0xff, 0xff, 0xff]), "snapshot name"),
            (diff_v1(b"q"), "unknown record"),
            (
                diff_v1(&[size(10), b"e".to_vec(), b"junk".to_vec()].concat()),
                "after its end",
            ),
            (
                diff_v1(
                    &[
                        size(10),
                        vec![b'w'],
                        u64::MAX.to_le_bytes().to_vec(),
                        2u64.to_le_bytes().to_vec(),
                    ]
                    .concat(),
                ),
                "outside",
            ),
        ];
        for (stream, says) in cases {
            let e = run(&stream, &file).expect_err(says).to_string();
            assert!(
                e.contains(says) && e.contains("disk.0.1.rbdiff") && e.contains("at byte"),
                "{e}"
            );
        }
    }
}
