//! A qcow2 image written front to back, for a pipe: the downloader streams a snapshot's disk
//! as a standalone qcow2 (what OpenNebula's image datastores and in-place restore expect)
//! without temporary space and without seeking.
//!
//! Every snapshot's file node says, before any data is read, which blobs are all zero (their id
//! is the hash of zeros of their length). So the whole layout is known up front: a guest
//! cluster is allocated when a non-zero blob overlaps it, and the metadata can be written first:
//!
//! ```text
//! header | L1 table | refcount table | refcount blocks | L2 tables | data clusters (guest order)
//! ```
//!
//! qcow2 version 3, 64 KiB clusters, 16-bit refcounts, no backing file, no compression. Every
//! host cluster has refcount 1; L1 and L2 entries carry the COPIED flag, as `qemu-img check`
//! expects. A size that is not a multiple of 512 is rounded up (qemu counts in sectors; the
//! padding reads as zeros). All-zero guest clusters inside a non-zero blob are stored (they cost space, not
//! correctness; `dd conv=sparse` on the receiving side makes them holes again).

use std::io::{self, Write};

pub const CLUSTER_BITS: u32 = 16;
pub const CLUSTER: u64 = 1 << CLUSTER_BITS;
const L2_ENTRIES: u64 = CLUSTER / 8;
/// 16-bit refcounts: entries per refcount block.
const REFCOUNT_ENTRIES: u64 = CLUSTER / 2;
const COPIED: u64 = 1 << 63;
const HEADER_LEN: u32 = 104;

/// Which guest clusters hold data, one bit each; with [`Allocation::zero_rest`], every other
/// cluster is an explicit zero cluster (a delta that hides all of its backing file).
#[derive(Debug, Clone)]
pub struct Allocation {
    size: u64,
    bits: Vec<u64>,
    zero_rest: bool,
}

impl Allocation {
    pub fn new(size: u64) -> Allocation {
        let clusters = size.div_ceil(CLUSTER);
        Allocation {
            size,
            bits: vec![0; clusters.div_ceil(64) as usize],
            zero_rest: false,
        }
    }

    /// Every cluster without data reads as zeros even over a backing file (the qcow2 v3
    /// zero flag), so the image stands for the whole disk whatever it is rebased onto.
    pub fn zero_rest(&mut self) {
        self.zero_rest = true;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Marks the clusters `[offset, offset + length)` overlaps.
    pub fn mark(&mut self, offset: u64, length: u64) {
        if length == 0 || offset >= self.size {
            return;
        }
        let end = (offset + length).min(self.size);
        for c in offset / CLUSTER..=(end - 1) / CLUSTER {
            self.bits[(c / 64) as usize] |= 1 << (c % 64);
        }
    }

    pub fn is_set(&self, cluster: u64) -> bool {
        self.bits
            .get((cluster / 64) as usize)
            .is_some_and(|w| w & (1 << (cluster % 64)) != 0)
    }

    pub fn count(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    fn clusters(&self) -> u64 {
        self.size.div_ceil(CLUSTER)
    }

    /// The first allocated cluster at or after `from`, or the cluster count.
    fn next_set(&self, from: u64) -> u64 {
        let total = self.clusters();
        let mut c = from;
        while c < total {
            let word = self.bits[(c / 64) as usize] >> (c % 64);
            if word != 0 {
                return (c + u64::from(word.trailing_zeros())).min(total);
            }
            c = (c / 64 + 1) * 64;
        }
        total
    }

    fn any_in(&self, first: u64, end: u64) -> bool {
        self.next_set(first) < end.min(self.clusters())
    }
}

/// Where everything goes in the file, in clusters.
#[derive(Debug, Clone)]
pub struct Layout {
    pub size: u64,
    l1_entries: u64,
    l1_clusters: u64,
    refcount_table_clusters: u64,
    refcount_blocks: u64,
    /// L1 indices that get an L2 table, in order.
    l2_tables: Vec<u64>,
    pub data_clusters: u64,
    pub file_clusters: u64,
}

impl Layout {
    pub fn new(alloc: &Allocation) -> Layout {
        let size = alloc.size;
        let l1_entries = alloc.clusters().div_ceil(L2_ENTRIES).max(1);
        let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER);
        let l2_tables: Vec<u64> = (0..l1_entries)
            .filter(|&i| alloc.zero_rest || alloc.any_in(i * L2_ENTRIES, (i + 1) * L2_ENTRIES))
            .collect();
        let data_clusters = alloc.count();
        let fixed = 1 + l1_clusters + l2_tables.len() as u64 + data_clusters;
        // The refcount structures count themselves: grow until they cover the whole file.
        let (mut blocks, mut table) = (1u64, 1u64);
        loop {
            let total = fixed + blocks + table;
            let need_blocks = total.div_ceil(REFCOUNT_ENTRIES);
            let need_table = (need_blocks * 8).div_ceil(CLUSTER);
            if need_blocks <= blocks && need_table <= table {
                break;
            }
            blocks = blocks.max(need_blocks);
            table = table.max(need_table);
        }
        Layout {
            size,
            l1_entries,
            l1_clusters,
            refcount_table_clusters: table,
            refcount_blocks: blocks,
            l2_tables,
            data_clusters,
            file_clusters: fixed + blocks + table,
        }
    }

    fn l1_at(&self) -> u64 {
        1
    }
    fn refcount_table_at(&self) -> u64 {
        self.l1_at() + self.l1_clusters
    }
    fn refcount_blocks_at(&self) -> u64 {
        self.refcount_table_at() + self.refcount_table_clusters
    }
    fn l2_at(&self) -> u64 {
        self.refcount_blocks_at() + self.refcount_blocks
    }
    fn data_at(&self) -> u64 {
        self.l2_at() + self.l2_tables.len() as u64
    }

    /// The size of the whole qcow2 file in bytes.
    pub fn file_size(&self) -> u64 {
        self.file_clusters * CLUSTER
    }

    /// Writes everything before the first data cluster.
    pub fn write_metadata(&self, alloc: &Allocation, out: &mut impl Write) -> io::Result<()> {
        let mut cluster = vec![0u8; CLUSTER as usize];
        // Header.
        let mut h = Vec::with_capacity(HEADER_LEN as usize);
        h.extend_from_slice(b"QFI\xfb");
        h.extend_from_slice(&3u32.to_be_bytes()); // version
        h.extend_from_slice(&0u64.to_be_bytes()); // backing file offset
        h.extend_from_slice(&0u32.to_be_bytes()); // backing file size
        h.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
        // qemu counts in 512-byte sectors; a size between them is rounded up, zero-padded.
        h.extend_from_slice(&self.size.next_multiple_of(512).to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // no encryption
        h.extend_from_slice(&(self.l1_entries as u32).to_be_bytes());
        h.extend_from_slice(&(self.l1_at() * CLUSTER).to_be_bytes());
        h.extend_from_slice(&(self.refcount_table_at() * CLUSTER).to_be_bytes());
        h.extend_from_slice(&(self.refcount_table_clusters as u32).to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // no snapshots
        h.extend_from_slice(&0u64.to_be_bytes()); // snapshots offset
        h.extend_from_slice(&0u64.to_be_bytes()); // incompatible features
        h.extend_from_slice(&0u64.to_be_bytes()); // compatible features
        h.extend_from_slice(&0u64.to_be_bytes()); // autoclear features
        h.extend_from_slice(&4u32.to_be_bytes()); // refcount order: 16 bits
        h.extend_from_slice(&HEADER_LEN.to_be_bytes());
        debug_assert_eq!(h.len(), HEADER_LEN as usize);
        // An all-zero extension header follows: the end-of-extensions marker.
        cluster[..h.len()].copy_from_slice(&h);
        out.write_all(&cluster)?;

        // L1 table.
        let mut l1 = vec![0u8; (self.l1_clusters * CLUSTER) as usize];
        for (n, &i) in self.l2_tables.iter().enumerate() {
            let at = ((self.l2_at() + n as u64) * CLUSTER) | COPIED;
            l1[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&at.to_be_bytes());
        }
        out.write_all(&l1)?;

        // Refcount table.
        let mut table = vec![0u8; (self.refcount_table_clusters * CLUSTER) as usize];
        for b in 0..self.refcount_blocks {
            let at = (self.refcount_blocks_at() + b) * CLUSTER;
            table[(b * 8) as usize..(b * 8 + 8) as usize].copy_from_slice(&at.to_be_bytes());
        }
        out.write_all(&table)?;

        // Refcount blocks: 1 for every cluster of the file.
        for b in 0..self.refcount_blocks {
            cluster.fill(0);
            let first = b * REFCOUNT_ENTRIES;
            let used = self
                .file_clusters
                .saturating_sub(first)
                .min(REFCOUNT_ENTRIES);
            for e in 0..used as usize {
                cluster[e * 2..e * 2 + 2].copy_from_slice(&1u16.to_be_bytes());
            }
            out.write_all(&cluster)?;
        }

        // L2 tables: data clusters are laid out in guest order.
        let mut next_data = self.data_at();
        for &i in &self.l2_tables {
            cluster.fill(0);
            let first = i * L2_ENTRIES;
            let end = (first + L2_ENTRIES).min(alloc.clusters());
            if alloc.zero_rest {
                // Bit 0 of an L2 entry: the cluster reads as zeros.
                for c in first..end {
                    let e = (c - first) as usize;
                    cluster[e * 8 + 7] = 1;
                }
            }
            let mut c = alloc.next_set(first);
            while c < end {
                let e = (c - first) as usize;
                let at = (next_data * CLUSTER) | COPIED;
                cluster[e * 8..e * 8 + 8].copy_from_slice(&at.to_be_bytes());
                next_data += 1;
                c = alloc.next_set(c + 1);
            }
            out.write_all(&cluster)?;
        }
        Ok(())
    }
}

/// Writes the data clusters of a qcow2 from the guest content given in order, piece by piece.
#[derive(Debug)]
pub struct DataWriter<'a, W: Write> {
    alloc: &'a Allocation,
    out: W,
    pos: u64,
    buf: Vec<u8>,
    pub written: u64,
}

impl<'a, W: Write> DataWriter<'a, W> {
    pub fn new(alloc: &'a Allocation, out: W) -> Self {
        DataWriter {
            alloc,
            out,
            pos: 0,
            buf: vec![0u8; CLUSTER as usize],
            written: 0,
        }
    }

    fn flush_cluster_if_full(&mut self) -> io::Result<()> {
        let in_cluster = self.pos % CLUSTER;
        if in_cluster == 0 || self.pos == self.alloc.size {
            let c = (self.pos - 1) / CLUSTER;
            if self.alloc.is_set(c) {
                if in_cluster != 0 {
                    // The last cluster of the disk, padded with zeros.
                    self.buf[in_cluster as usize..].fill(0);
                }
                self.out.write_all(&self.buf)?;
                self.written += CLUSTER;
            }
        }
        Ok(())
    }

    /// The next `data.len()` bytes of the guest.
    pub fn data(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.pos >= self.alloc.size {
                return Err(io::Error::other("more data than the disk size"));
            }
            let at = (self.pos % CLUSTER) as usize;
            let n = data.len().min(CLUSTER as usize - at);
            if !self.alloc.is_set(self.pos / CLUSTER) {
                if data[..n].iter().any(|&b| b != 0) {
                    return Err(io::Error::other(format!(
                        "data at offset {} in a cluster planned as empty",
                        self.pos
                    )));
                }
            } else {
                self.buf[at..at + n].copy_from_slice(&data[..n]);
            }
            self.pos += n as u64;
            data = &data[n..];
            self.flush_cluster_if_full()?;
        }
        Ok(())
    }

    /// The next `length` bytes of the guest are zero.
    pub fn zeros(&mut self, mut length: u64) -> io::Result<()> {
        while length > 0 {
            if self.pos >= self.alloc.size {
                return Err(io::Error::other("more data than the disk size"));
            }
            let c = self.pos / CLUSTER;
            let at = self.pos % CLUSTER;
            if at == 0 && !self.alloc.is_set(c) {
                // Skip whole empty clusters up to the next allocated one.
                let next = self.alloc.next_set(c) * CLUSTER;
                let n = (next.min(self.alloc.size) - self.pos).min(length);
                self.pos += n;
                length -= n;
                continue;
            }
            let n = length.min(CLUSTER - at);
            if self.alloc.is_set(c) {
                self.buf[at as usize..(at + n) as usize].fill(0);
            }
            self.pos += n;
            length -= n;
            self.flush_cluster_if_full()?;
        }
        Ok(())
    }

    /// Checks that the whole disk was given and flushes the output.
    pub fn finish(mut self) -> io::Result<u64> {
        if self.pos != self.alloc.size {
            return Err(io::Error::other(format!(
                "the content ended at {} of {} bytes",
                self.pos, self.alloc.size
            )));
        }
        self.out.flush()?;
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Writes `content` (None = zeros) as a qcow2 with the streaming writer.
    fn stream(size: u64, pieces: &[(u64, Option<Vec<u8>>)]) -> Vec<u8> {
        let mut alloc = Allocation::new(size);
        let mut at = 0;
        for (len, data) in pieces {
            if data.is_some() {
                alloc.mark(at, *len);
            }
            at += len;
        }
        assert_eq!(at, size);
        let layout = Layout::new(&alloc);
        let mut out = Vec::new();
        layout.write_metadata(&alloc, &mut out).expect("metadata");
        let mut w = DataWriter::new(&alloc, &mut out);
        for (len, data) in pieces {
            match data {
                Some(d) => w.data(d).expect("data"),
                None => w.zeros(*len).expect("zeros"),
            }
        }
        let written = w.finish().expect("finish");
        assert_eq!(written, layout.data_clusters * CLUSTER);
        assert_eq!(out.len() as u64, layout.file_size());
        out
    }

    fn qemu_img(args: &[&str]) -> (bool, String) {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img is installed (.ci/run installs qemu-utils)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    fn check_against_raw(size: u64, pieces: &[(u64, Option<Vec<u8>>)]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = dir.path().join("x.qcow2");
        let raw = dir.path().join("x.raw");
        std::fs::write(&q, stream(size, pieces)).expect("write qcow2");
        // The raw twin is sparse: only the data pieces are written.
        let file = std::fs::File::create(&raw).expect("create raw");
        file.set_len(size).expect("size raw");
        let mut at = 0;
        for (len, data) in pieces {
            if let Some(d) = data {
                std::os::unix::fs::FileExt::write_all_at(&file, d, at).expect("write raw");
            }
            at += len;
        }
        let (ok, text) = qemu_img(&["check", "-f", "qcow2", q.to_str().expect("utf-8")]);
        assert!(ok, "qemu-img check: {text}");
        assert!(text.contains("No errors were found"), "{text}");
        let (ok, text) = qemu_img(&[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "raw",
            q.to_str().expect("utf-8"),
            raw.to_str().expect("utf-8"),
        ]);
        assert!(ok, "qemu-img compare: {text}");
        let (ok, text) = qemu_img(&["info", "--output=json", q.to_str().expect("utf-8")]);
        assert!(ok, "{text}");
        let virtual_size = size.next_multiple_of(512);
        assert!(
            text.contains(&format!("\"virtual-size\": {virtual_size}")),
            "{text}"
        );
    }

    fn noise(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect()
    }

    #[test]
    fn qemu_reads_streamed_images_as_their_content() {
        // Empty disk; a disk of odd size ending in data; blobs not aligned to clusters.
        check_against_raw(5 << 20, &[(5 << 20, None)]);
        check_against_raw(
            3 * CLUSTER + 1000,
            &[
                (CLUSTER + 10, Some(noise(CLUSTER as usize + 10, 1))),
                (2 * CLUSTER - 10, None),
                (1000, Some(noise(1000, 2))),
            ],
        );
        check_against_raw(
            1 << 20,
            &[
                (100, None),
                (200_000, Some(noise(200_000, 3))),
                (300_000, None),
                (1, Some(vec![7])),
                ((1 << 20) - 500_101, None),
            ],
        );
    }

    #[test]
    fn big_sparse_disks_need_several_l2_tables_and_refcount_blocks() {
        // 3 GiB virtual: 6 L1 entries; data at both ends and across an L2 boundary.
        let size = 3u64 << 30;
        let l2_span = L2_ENTRIES * CLUSTER;
        let pieces = vec![
            (CLUSTER, Some(noise(CLUSTER as usize, 4))),
            (l2_span - 2 * CLUSTER, None),
            (2 * CLUSTER, Some(noise(2 * CLUSTER as usize, 5))),
            (size - l2_span - 2 * CLUSTER, None),
            (CLUSTER, Some(noise(CLUSTER as usize, 6))),
        ];
        check_against_raw(size, &pieces);
        let mut alloc = Allocation::new(size);
        alloc.mark(0, CLUSTER);
        alloc.mark(l2_span - CLUSTER, 2 * CLUSTER);
        alloc.mark(size - CLUSTER, CLUSTER);
        let layout = Layout::new(&alloc);
        assert_eq!(layout.l1_entries, 6);
        assert_eq!(layout.l2_tables, vec![0, 1, 5]);
        assert_eq!(layout.data_clusters, 4);
    }

    #[test]
    fn refcounts_grow_to_cover_themselves() {
        // Just past one refcount block's reach (32768 clusters = 2 GiB of file).
        let mut alloc = Allocation::new(2 << 30);
        alloc.mark(0, 2 << 30);
        let layout = Layout::new(&alloc);
        assert_eq!(layout.refcount_blocks, 2);
        assert!(layout.file_clusters <= layout.refcount_blocks * REFCOUNT_ENTRIES);
        assert!(layout.refcount_blocks * 8 <= layout.refcount_table_clusters * CLUSTER);
    }

    /// A delta with explicit zero clusters hides its backing file everywhere it has no data.
    #[test]
    fn zero_clusters_hide_the_backing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let size = 4 * CLUSTER;
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![0xaa; size as usize]).expect("base");
        let mut alloc = Allocation::new(size);
        alloc.mark(CLUSTER, CLUSTER);
        alloc.zero_rest();
        let layout = Layout::new(&alloc);
        let mut out = Vec::new();
        layout.write_metadata(&alloc, &mut out).expect("metadata");
        let mut w = DataWriter::new(&alloc, &mut out);
        w.zeros(CLUSTER).expect("zeros");
        w.data(&noise(CLUSTER as usize, 9)).expect("data");
        w.zeros(2 * CLUSTER).expect("zeros");
        w.finish().expect("finish");
        let delta = dir.path().join("delta.qcow2");
        std::fs::write(&delta, &out).expect("delta");
        let d = delta.to_str().expect("utf-8");
        let (ok, text) = qemu_img(&[
            "rebase",
            "-u",
            "-F",
            "raw",
            "-b",
            base.to_str().expect("utf-8"),
            d,
        ]);
        assert!(ok, "{text}");
        let (ok, text) = qemu_img(&["check", "-q", "-f", "qcow2", d]);
        assert!(ok, "{text}");
        let want = dir.path().join("want.raw");
        let mut content = vec![0u8; size as usize];
        content[CLUSTER as usize..2 * CLUSTER as usize]
            .copy_from_slice(&noise(CLUSTER as usize, 9));
        std::fs::write(&want, content).expect("want");
        let (ok, text) = qemu_img(&[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "raw",
            d,
            want.to_str().expect("utf-8"),
        ]);
        assert!(ok, "the backing file shows through: {text}");
    }

    #[test]
    fn content_that_contradicts_the_plan_is_an_error() {
        let alloc = Allocation::new(2 * CLUSTER);
        let mut w = DataWriter::new(&alloc, Vec::new());
        assert!(w.data(&[1]).is_err());
        let mut w = DataWriter::new(&alloc, Vec::new());
        w.zeros(CLUSTER).expect("zeros");
        assert!(w.finish().is_err(), "short content");
        let mut w = DataWriter::new(&alloc, Vec::new());
        assert!(w.zeros(3 * CLUSTER).is_err(), "too long");
    }
}
