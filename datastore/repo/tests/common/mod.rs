//! Helpers shared by the repository tests: the restic binary, deterministic images.
#![allow(dead_code)] // each test binary uses a different part

#[allow(unused_imports)] // each test binary uses some of them
pub use backstop_testkit::{ceph, s3, sshd};

use backstop_image::image::{CHUNK_SIZE, Extent};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Output;

pub const PASSWORD: &str = "compat test password";
pub const DISK: &str = "/var/lib/one//datastores/0/22/backup/disk.0.0";

pub fn restic(repo: &Path, args: &[&str]) -> Output {
    backstop_testkit::restic::local(repo, PASSWORD, args)
}

pub fn ok(out: Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out.stdout
}

/// Deterministic bytes: xorshift64*.
pub struct Gen(pub u64);
impl Gen {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// An image of `mib` MiB: zeros, random, text-like and repeated regions.
pub fn make_image(path: &Path, mib: u64, seed: u64) {
    let mut g = Gen(seed);
    let f = fs::File::create(path).expect("create");
    f.set_len(mib * CHUNK_SIZE).expect("size");
    let words = ["backup ", "restic ", "opennebula ", "disk ", "chunk ", "\n"];
    for i in 0..mib {
        let mut buf = vec![0u8; CHUNK_SIZE as usize];
        match i % 4 {
            0 => continue, // hole
            1 => g.fill(&mut buf),
            2 => {
                let mut pos = 0;
                while pos < buf.len() {
                    let w = words[(g.next() % words.len() as u64) as usize].as_bytes();
                    let n = w.len().min(buf.len() - pos);
                    buf[pos..pos + n].copy_from_slice(&w[..n]);
                    pos += n;
                }
            }
            _ => buf
                .iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = (j % 251) as u8),
        }
        f.write_all_at(&buf, i * CHUNK_SIZE).expect("write");
    }
}

/// Backs up `image` as DISK (tag `one-22`), on `parent` with only `changed` read when given.
pub fn backup_disk(
    repo: &backstop_repo::Repo,
    image: &Path,
    changed: Option<&[Extent]>,
    parent: Option<backstop_repo::format::RepoId>,
) -> backstop_repo::writer::BackupResult {
    use backstop_repo::writer::{self, BackupOptions, Content, FileSpec};
    let source = backstop_image::image::RawImage::open(image).expect("open image");
    let files = [FileSpec {
        path: DISK.into(),
        content: Content::Image {
            source: &source,
            changed,
            parent_path: Some(DISK.into()),
        },
    }];
    let options = BackupOptions {
        tags: vec!["one-22".into()],
        parent,
        ..BackupOptions::default()
    };
    writer::backup(repo, &files, &options).expect("backup")
}

/// Rewrites `count` scattered regions; returns them as changed extents.
pub fn scribble(path: &Path, count: usize, seed: u64) -> Vec<Extent> {
    let mut g = Gen(seed);
    let f = fs::OpenOptions::new().write(true).open(path).expect("open");
    let size = f.metadata().expect("meta").len();
    (0..count)
        .map(|_| {
            let len = 1 + g.next() % 100_000;
            let off = g.next() % (size - len);
            let mut buf = vec![0u8; len as usize];
            g.fill(&mut buf);
            f.write_all_at(&buf, off).expect("write");
            Extent {
                offset: off,
                length: len,
            }
        })
        .collect()
}

pub fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// A child process stopped by its PID when the test ends, whatever happens.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A source that blocks its reads until released, so a backup holds its lock meanwhile.
pub struct Gated {
    inner: backstop_image::image::RawImage,
    open: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Gated {
    pub fn new(image: &Path) -> Gated {
        Gated {
            inner: backstop_image::image::RawImage::open(image).expect("open"),
            open: std::sync::Mutex::new(false),
            cv: std::sync::Condvar::new(),
        }
    }

    /// Lets every read through from now on.
    pub fn release(&self) {
        *self.open.lock().expect("lock") = true;
        self.cv.notify_all();
    }
}

impl backstop_image::image::ImageSource for Gated {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let mut open = self.open.lock().expect("lock");
        while !*open {
            open = self.cv.wait(open).expect("wait");
        }
        drop(open);
        self.inner.read_at(buf, offset)
    }
}

/// Waits until the kernel reports the child stopped (state `T`) or gone, so that what the
/// test sees afterwards (its lock file) can no longer change under it. A SIGSTOP is delivered
/// asynchronously: right after `kill` the process may still run for a moment and, at the end
/// of a short `restic check`, remove its lock.
pub fn wait_stopped(child: &std::process::Child) -> bool {
    let stat = format!("/proc/{}/stat", child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let Ok(text) = std::fs::read_to_string(&stat) else {
            return false;
        };
        // The state follows the command name, which is in parentheses.
        let state = text
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        match state {
            Some('T') | Some('t') => return true,
            Some('Z') | Some('X') | None => return false,
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the child did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
