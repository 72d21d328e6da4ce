//! The SFTP protocol, version 3 (the one OpenSSH's server speaks), as bytes: requests encoded,
//! replies decoded. No I/O here; [`super::client`] moves the packets. Only what a restic
//! repository needs is spoken: open, read, write, close, stat, directories, mkdir, remove,
//! rename, and OpenSSH's extensions `fsync@openssh.com`, `statvfs@openssh.com` and
//! `limits@openssh.com`. The layout of each packet: docs/sftp.md.
//!
//! A reply comes from the server, which is not trusted to be well-formed: every length is
//! checked against what is left of the packet and a bad one is an error, never a panic.

/// Packet types.
pub const INIT: u8 = 1;
pub const VERSION: u8 = 2;
pub const OPEN: u8 = 3;
pub const CLOSE: u8 = 4;
pub const READ: u8 = 5;
pub const WRITE: u8 = 6;
pub const FSTAT: u8 = 8;
pub const OPENDIR: u8 = 11;
pub const READDIR: u8 = 12;
pub const REMOVE: u8 = 13;
pub const MKDIR: u8 = 14;
pub const STAT: u8 = 17;
pub const RENAME: u8 = 18;
pub const STATUS: u8 = 101;
pub const HANDLE: u8 = 102;
pub const DATA: u8 = 103;
pub const NAME: u8 = 104;
pub const ATTRS: u8 = 105;
pub const EXTENDED: u8 = 200;
pub const EXTENDED_REPLY: u8 = 201;

/// Status codes.
pub const FX_OK: u32 = 0;
pub const FX_EOF: u32 = 1;
pub const FX_NO_SUCH_FILE: u32 = 2;
pub const FX_PERMISSION_DENIED: u32 = 3;
pub const FX_FAILURE: u32 = 4;
pub const FX_OP_UNSUPPORTED: u32 = 8;

/// Open flags.
pub const OPEN_READ: u32 = 0x01;
pub const OPEN_WRITE: u32 = 0x02;
pub const OPEN_CREATE: u32 = 0x08;
pub const OPEN_EXCLUSIVE: u32 = 0x20;

const ATTR_SIZE: u32 = 0x01;
const ATTR_UIDGID: u32 = 0x02;
const ATTR_PERMISSIONS: u32 = 0x04;
const ATTR_ACMODTIME: u32 = 0x08;
const ATTR_EXTENDED: u32 = 0x8000_0000;

/// The largest packet accepted from a server: OpenSSH's own limit (256 KiB) with room for
/// a reply's header. A longer length is a broken or hostile server.
pub const MAX_PACKET: u32 = 256 * 1024 + 1024;

/// A reply that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the server sent a malformed SFTP reply ({})", self.0)
    }
}

/// A request being built: `u32` length, type, id, then the fields.
#[derive(Debug)]
pub struct Packet(Vec<u8>);

impl Packet {
    fn new(kind: u8, id: Option<u32>, capacity: usize) -> Packet {
        let mut b = Vec::with_capacity(9 + capacity);
        b.extend_from_slice(&[0; 4]);
        b.push(kind);
        if let Some(id) = id {
            b.extend_from_slice(&id.to_be_bytes());
        }
        Packet(b)
    }

    fn u32(mut self, v: u32) -> Packet {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn u64(mut self, v: u64) -> Packet {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn bytes(mut self, v: &[u8]) -> Packet {
        // Every string this client sends is a path, a handle or a piece of at most a few
        // hundred KiB: far below 4 GiB.
        self.0
            .extend_from_slice(&u32::try_from(v.len()).unwrap_or(u32::MAX).to_be_bytes());
        self.0.extend_from_slice(v);
        self
    }

    fn str(self, v: &str) -> Packet {
        self.bytes(v.as_bytes())
    }

    /// The finished packet, its length filled in.
    pub fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.0.len() - 4).unwrap_or(u32::MAX);
        self.0[..4].copy_from_slice(&len.to_be_bytes());
        self.0
    }
}

pub fn init() -> Vec<u8> {
    Packet::new(INIT, None, 4).u32(3).finish()
}

/// OPEN with the permissions a created file gets.
pub fn open(id: u32, path: &str, flags: u32, mode: Option<u32>) -> Vec<u8> {
    let p = Packet::new(OPEN, Some(id), path.len() + 16)
        .str(path)
        .u32(flags);
    match mode {
        Some(m) => p.u32(ATTR_PERMISSIONS).u32(m),
        None => p.u32(0),
    }
    .finish()
}

pub fn close(id: u32, handle: &[u8]) -> Vec<u8> {
    Packet::new(CLOSE, Some(id), handle.len() + 4)
        .bytes(handle)
        .finish()
}

pub fn read(id: u32, handle: &[u8], offset: u64, len: u32) -> Vec<u8> {
    Packet::new(READ, Some(id), handle.len() + 16)
        .bytes(handle)
        .u64(offset)
        .u32(len)
        .finish()
}

pub fn write(id: u32, handle: &[u8], offset: u64, data: &[u8]) -> Vec<u8> {
    Packet::new(WRITE, Some(id), handle.len() + data.len() + 16)
        .bytes(handle)
        .u64(offset)
        .bytes(data)
        .finish()
}

pub fn fstat(id: u32, handle: &[u8]) -> Vec<u8> {
    Packet::new(FSTAT, Some(id), handle.len() + 4)
        .bytes(handle)
        .finish()
}

pub fn stat(id: u32, path: &str) -> Vec<u8> {
    Packet::new(STAT, Some(id), path.len() + 4)
        .str(path)
        .finish()
}

pub fn opendir(id: u32, path: &str) -> Vec<u8> {
    Packet::new(OPENDIR, Some(id), path.len() + 4)
        .str(path)
        .finish()
}

pub fn readdir(id: u32, handle: &[u8]) -> Vec<u8> {
    Packet::new(READDIR, Some(id), handle.len() + 4)
        .bytes(handle)
        .finish()
}

pub fn remove(id: u32, path: &str) -> Vec<u8> {
    Packet::new(REMOVE, Some(id), path.len() + 4)
        .str(path)
        .finish()
}

pub fn mkdir(id: u32, path: &str, mode: u32) -> Vec<u8> {
    Packet::new(MKDIR, Some(id), path.len() + 12)
        .str(path)
        .u32(ATTR_PERMISSIONS)
        .u32(mode)
        .finish()
}

/// RENAME, which OpenSSH's server refuses when `to` exists (it links, then unlinks).
pub fn rename(id: u32, from: &str, to: &str) -> Vec<u8> {
    Packet::new(RENAME, Some(id), from.len() + to.len() + 8)
        .str(from)
        .str(to)
        .finish()
}

pub fn fsync(id: u32, handle: &[u8]) -> Vec<u8> {
    Packet::new(EXTENDED, Some(id), handle.len() + 24)
        .str("fsync@openssh.com")
        .bytes(handle)
        .finish()
}

pub fn statvfs(id: u32, path: &str) -> Vec<u8> {
    Packet::new(EXTENDED, Some(id), path.len() + 24)
        .str("statvfs@openssh.com")
        .str(path)
        .finish()
}

pub fn limits(id: u32) -> Vec<u8> {
    Packet::new(EXTENDED, Some(id), 24)
        .str("limits@openssh.com")
        .finish()
}

/// A reader over a reply's fields.
#[derive(Debug)]
pub struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    pub fn new(b: &'a [u8]) -> Fields<'a> {
        Fields(b)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1, "a byte is missing")?[0])
    }

    pub fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4, "a 32-bit field is cut short")?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, Malformed> {
        let hi = u64::from(self.u32()?);
        let lo = u64::from(self.u32()?);
        Ok(hi << 32 | lo)
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u32()? as usize;
        self.take(n, "a string is longer than its packet")
    }

    pub fn string(&mut self) -> Result<String, Malformed> {
        Ok(String::from_utf8_lossy(self.bytes()?).into_owned())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the server says of a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    pub size: Option<u64>,
    pub permissions: Option<u32>,
    /// Seconds since the epoch.
    pub mtime: Option<u32>,
}

impl Attrs {
    pub fn is_dir(&self) -> bool {
        self.permissions.is_some_and(|p| p & 0o170_000 == 0o040_000)
    }

    pub fn is_file(&self) -> bool {
        self.permissions.is_some_and(|p| p & 0o170_000 == 0o100_000)
    }

    pub fn parse(f: &mut Fields<'_>) -> Result<Attrs, Malformed> {
        let flags = f.u32()?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(f.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            f.u32()?;
            f.u32()?;
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.permissions = Some(f.u32()?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            f.u32()?; // atime
            a.mtime = Some(f.u32()?);
        }
        if flags & ATTR_EXTENDED != 0 {
            let n = f.u32()?;
            for _ in 0..n {
                f.bytes()?;
                f.bytes()?;
            }
        }
        Ok(a)
    }
}

/// A reply, as far as its type says.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    Status {
        code: u32,
        message: String,
    },
    Handle(&'a [u8]),
    Data(&'a [u8]),
    /// Directory entries: names and attributes.
    Name(Vec<(String, Attrs)>),
    Attrs(Attrs),
    /// An extension's reply, its fields left to the caller.
    Extended(Fields<'a>),
}

impl PartialEq for Fields<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Fields<'_> {}

/// Splits a reply's body (after the length) into its request id and what it says.
pub fn parse_reply(body: &[u8]) -> Result<(u32, Reply<'_>), Malformed> {
    let mut f = Fields::new(body);
    let kind = f.u8()?;
    let id = f.u32()?;
    let reply = match kind {
        STATUS => {
            let code = f.u32()?;
            // OpenSSH always sends the message; a server of version 3 before it may not.
            let message = if f.is_empty() {
                String::new()
            } else {
                f.string()?
            };
            Reply::Status { code, message }
        }
        HANDLE => Reply::Handle(f.bytes()?),
        DATA => Reply::Data(f.bytes()?),
        NAME => {
            let n = f.u32()?;
            // Each entry takes at least 12 bytes: a count beyond the packet is a lie.
            if n as usize > body.len() / 12 {
                return Err(Malformed("more names than the packet can hold"));
            }
            let mut names = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let name = f.string()?;
                f.bytes()?; // the long name, as `ls -l` prints it
                names.push((name, Attrs::parse(&mut f)?));
            }
            Reply::Name(names)
        }
        ATTRS => Reply::Attrs(Attrs::parse(&mut f)?),
        EXTENDED_REPLY => Reply::Extended(f),
        _ => return Err(Malformed("an unknown reply type")),
    };
    Ok((id, reply))
}

/// The server's VERSION: its version and the extensions it names.
pub fn parse_version(body: &[u8]) -> Result<(u32, Vec<(String, String)>), Malformed> {
    let mut f = Fields::new(body);
    if f.u8()? != VERSION {
        return Err(Malformed("the first reply is not VERSION"));
    }
    let version = f.u32()?;
    let mut ext = Vec::new();
    while !f.is_empty() {
        ext.push((f.string()?, f.string()?));
    }
    Ok((version, ext))
}

/// What `statvfs@openssh.com` says: block size and blocks free for an unprivileged user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statvfs {
    pub frsize: u64,
    pub bavail: u64,
}

impl Statvfs {
    pub fn parse(f: &mut Fields<'_>) -> Result<Statvfs, Malformed> {
        let _bsize = f.u64()?;
        let frsize = f.u64()?;
        let _blocks = f.u64()?;
        let _bfree = f.u64()?;
        let bavail = f.u64()?;
        Ok(Statvfs { frsize, bavail })
    }

    pub fn free_bytes(&self) -> u64 {
        self.bavail.saturating_mul(self.frsize)
    }
}

/// What `limits@openssh.com` says (0: no limit given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_packet: u64,
    pub max_read: u64,
    pub max_write: u64,
}

impl Limits {
    pub fn parse(f: &mut Fields<'_>) -> Result<Limits, Malformed> {
        Ok(Limits {
            max_packet: f.u64()?,
            max_read: f.u64()?,
            max_write: f.u64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(packet: &[u8]) -> &[u8] {
        let len = u32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]) as usize;
        assert_eq!(len, packet.len() - 4, "the length field counts the rest");
        &packet[4..]
    }

    #[test]
    fn requests_carry_their_type_id_and_fields() {
        let p = write(7, b"h1", 1 << 33, b"abc");
        let mut f = Fields::new(body(&p));
        assert_eq!(f.u8(), Ok(WRITE));
        assert_eq!(f.u32(), Ok(7));
        assert_eq!(f.bytes(), Ok(&b"h1"[..]));
        assert_eq!(f.u64(), Ok(1 << 33));
        assert_eq!(f.bytes(), Ok(&b"abc"[..]));
        assert!(f.is_empty());

        let p = open(
            1,
            "/r/x",
            OPEN_WRITE | OPEN_CREATE | OPEN_EXCLUSIVE,
            Some(0o600),
        );
        let mut f = Fields::new(body(&p));
        assert_eq!((f.u8(), f.u32()), (Ok(OPEN), Ok(1)));
        assert_eq!(f.string().as_deref(), Ok("/r/x"));
        assert_eq!(f.u32(), Ok(0x2a));
        assert_eq!(Attrs::parse(&mut f).map(|a| a.permissions), Ok(Some(0o600)));
        assert_eq!(body(&init()), &[INIT, 0, 0, 0, 3]);
    }

    #[test]
    fn replies_parse_and_their_lengths_are_checked() {
        // A NAME with one entry: a regular file of 5 bytes.
        let mut b = vec![NAME, 0, 0, 0, 9, 0, 0, 0, 1];
        for s in [&b"f"[..], b"-rw------- 1 f"] {
            b.extend_from_slice(&(s.len() as u32).to_be_bytes());
            b.extend_from_slice(s);
        }
        b.extend_from_slice(&(ATTR_SIZE | ATTR_PERMISSIONS | ATTR_ACMODTIME).to_be_bytes());
        b.extend_from_slice(&5u64.to_be_bytes());
        b.extend_from_slice(&0o100_600u32.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
        let (id, reply) = parse_reply(&b).expect("name");
        assert_eq!(id, 9);
        let Reply::Name(names) = reply else {
            panic!("not a name")
        };
        assert_eq!(names[0].0, "f");
        assert_eq!(names[0].1.size, Some(5));
        assert_eq!(names[0].1.mtime, Some(2));
        assert!(names[0].1.is_file() && !names[0].1.is_dir());

        // Every cut of it is refused, never a panic.
        for n in 0..b.len() {
            assert!(parse_reply(&b[..n]).is_err(), "cut at {n}");
        }
        // A count of names beyond what the packet can hold.
        let mut lie = vec![NAME, 0, 0, 0, 1];
        lie.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_reply(&lie).is_err());
        // A data string longer than the packet.
        let mut long = vec![DATA, 0, 0, 0, 1];
        long.extend_from_slice(&100u32.to_be_bytes());
        long.extend_from_slice(b"short");
        assert!(parse_reply(&long).is_err());
        assert!(parse_reply(&[42, 0, 0, 0, 1]).is_err(), "unknown type");
    }

    #[test]
    fn version_lists_extensions() {
        let mut b = vec![VERSION, 0, 0, 0, 3];
        for s in ["limits@openssh.com", "1", "fsync@openssh.com", "1"] {
            b.extend_from_slice(&(s.len() as u32).to_be_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        let (v, ext) = parse_version(&b).expect("version");
        assert_eq!(v, 3);
        assert_eq!(ext.len(), 2);
        assert_eq!(ext[1].0, "fsync@openssh.com");
        assert!(parse_version(&b[..b.len() - 1]).is_err());
    }
}
