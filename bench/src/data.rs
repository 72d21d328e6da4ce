//! The benchmark's data: a deterministic disk image and its rewrites.

use sha2::{Digest, Sha256};
use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const MIB: u64 = 1 << 20;

pub struct Gen(pub u64);

impl Gen {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// The image: 1 MiB regions; the kind of each region is drawn so that the shares come out
/// as 30/25/27/18 %. Zeros are written as zero bytes (not holes): both tools read them.
pub fn generate(path: &Path, mib: u64) -> std::io::Result<()> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.set_len(mib * MIB)?;
    let mut g = Gen(0x5eed);
    let words: Vec<&[u8]> = [
        "the ",
        "backup ",
        "of ",
        "virtual ",
        "machine ",
        "disk ",
        "image ",
        "is ",
        "stored ",
        "in ",
        "chunks ",
        "\n",
        "0123 ",
        "INFO: ",
        "2026-11-21 ",
    ]
    .iter()
    .map(|w| w.as_bytes())
    .collect();
    let mut buf = vec![0u8; MIB as usize];
    for i in 0..mib {
        let r = g.next() % 100;
        buf.fill(0);
        match r {
            0..30 => {}
            30..55 => g.fill(&mut buf),
            55..82 => {
                let mut pos = 0;
                while pos < buf.len() {
                    let w = words[(g.next() % words.len() as u64) as usize];
                    let n = w.len().min(buf.len() - pos);
                    buf[pos..pos + n].copy_from_slice(&w[..n]);
                    pos += n;
                }
            }
            _ => {
                // a repeat of an earlier region (or of a fixed pattern at the start)
                if i > 0 {
                    let from = g.next() % i;
                    f.read_exact_at(&mut buf, from * MIB)?;
                } else {
                    buf.iter_mut()
                        .enumerate()
                        .for_each(|(j, b)| *b = (j % 253) as u8);
                }
            }
        }
        f.write_all_at(&buf, i * MIB)?;
    }
    f.sync_all()
}

/// Rewrites 5 % of the image in 50 places (chosen by `seed`); returns the extents as nbdinfo
/// JSON.
pub fn rewrite(path: &Path, size: u64, seed: u64) -> std::io::Result<String> {
    let f = fs::OpenOptions::new().write(true).open(path)?;
    let mut g = Gen(seed);
    let len = size / 20 / 50;
    let mut entries = Vec::new();
    for k in 0..50u64 {
        // one change in each fiftieth of the disk, at a random place inside it
        let slot = size / 50;
        let off = k * slot + g.next() % (slot - len);
        let mut buf = vec![0u8; len as usize];
        g.fill(&mut buf);
        f.write_all_at(&buf, off)?;
        entries.push(
            serde_json::json!({"offset": off, "length": len, "type": 1, "description": "dirty"}),
        );
    }
    f.sync_all()?;
    Ok(serde_json::Value::Array(entries).to_string())
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
