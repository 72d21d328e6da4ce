//! The comparison on one image: backstop and its peers, step by step, in one run.

use crate::data::{MIB, generate, rewrite, sha256_file};
use crate::peers::{NAME, Peer};
use crate::run::{Measure, q, settle, timed};
use crate::{cpu, s3, sshd};
use std::fs;
use std::path::{Path, PathBuf};

/// The path the image is stored under in backstop's snapshots (as the datastore driver does).
const FILE: &str = "/var/lib/one/datastores/0/7/backup/disk.0.0";

/// One step: backstop's measure and each peer's (in the order of [`Report::peers`]).
pub struct Row {
    pub name: &'static str,
    pub bytes: u64,
    pub backstop: Measure,
    pub peers: Vec<Measure>,
}

pub struct Report {
    pub size_mib: u64,
    /// Each peer's name and version.
    pub peers: Vec<String>,
    pub rows: Vec<Row>,
    /// Seconds of CPU work for the full backup from memory, and the threads used.
    pub cpu: (f64, usize),
    /// `cp --sparse=always` of the image and `sync`.
    pub floor: Measure,
    /// Over SFTP: backstop's full backup, and restic's.
    pub sftp: Option<(Measure, Measure)>,
    /// To S3 (a loopback SeaweedFS): backstop's full backup, and restic's.
    pub s3: Option<(Measure, Measure)>,
    /// From an RBD image of a single-node Ceph, against the stock Ceph TM's recipes.
    pub ceph: Option<crate::ceph::CephRows>,
    /// Copying a chain to SFTP, backstop's and restic's.
    pub sync: Option<crate::sync::SyncRows>,
    /// `backstop repo verify` and `restic check --read-data` of the benchmark's repository.
    pub verify: (Measure, Measure),
}

struct Bench<'a> {
    work: &'a Path,
    image: PathBuf,
    backstop: &'a Path,
    repo: PathBuf,
    peers: Vec<Peer>,
}

impl Bench<'_> {
    fn bs(&self, rest: &str) -> String {
        format!("{} repo -r {} {rest}", q(self.backstop), q(&self.repo))
    }

    /// Fails unless backstop's latest snapshot dumps to exactly the image.
    fn check(&self, label: &str) {
        let out = self.work.join("dump.raw");
        let script = format!("{} > {}", self.bs(&format!("dump latest {FILE}")), q(&out));
        timed(label, &script);
        let ok = sha256_file(&out).expect("hash") == sha256_file(&self.image).expect("hash");
        let _ = fs::remove_file(&out);
        assert!(ok, "{label}: backstop's dump differs from the image");
    }

    fn each_peer(&self, step: &str, script: impl Fn(&Peer) -> String) -> Vec<Measure> {
        self.peers
            .iter()
            .map(|p| {
                settle();
                timed(&format!("{} {step}", p.name()), &script(p))
            })
            .collect()
    }

    fn backups(&self, size: u64) -> Vec<Row> {
        for p in &self.peers {
            timed(&format!("{} init", p.name()), &p.init());
        }
        timed("backstop init", &self.bs("init"));
        let peers = self.each_peer("full", |p| p.backup(&self.image));
        settle();
        let backstop = timed(
            "backstop full",
            &self.bs(&format!(
                "backup --image {} --format raw --path {FILE}",
                q(&self.image)
            )),
        );
        self.check("verify full");
        let full = Row {
            name: "full backup",
            bytes: size,
            backstop,
            peers,
        };
        let extents = self.work.join("changed.json");
        fs::write(
            &extents,
            rewrite(&self.image, size, 0xc0ffee).expect("rewrite"),
        )
        .expect("extents");
        let peers = self.each_peer("incremental", |p| p.backup(&self.image));
        settle();
        let backstop = timed(
            "backstop incremental",
            &self.bs(&format!(
                "backup --image {} --format raw --path {FILE} --parent latest --changed-extents {}",
                q(&self.image),
                q(&extents)
            )),
        );
        self.check("verify incremental");
        let inc = Row {
            name: "incremental (5 % in 50 places)",
            bytes: size,
            backstop,
            peers,
        };
        let peers = self.each_peer("open", Peer::open);
        let open = Row {
            name: "open (key, snapshot list)",
            bytes: 0,
            backstop: timed("backstop open", &self.bs("snapshots")),
            peers,
        };
        vec![full, inc, open]
    }

    /// Dump to /dev/null, restore + sync, and the `cp` floor.
    fn restores(&self, size: u64) -> (Vec<Row>, Measure) {
        let peers = self.each_peer("dump", Peer::dump_to_null);
        settle();
        let dump = Row {
            name: "dump latest to /dev/null",
            bytes: size,
            backstop: timed(
                "backstop dump",
                &self.bs(&format!("dump latest {FILE} > /dev/null")),
            ),
            peers,
        };
        let dirs: Vec<PathBuf> = self
            .peers
            .iter()
            .map(|p| self.work.join(format!("{}-restore", p.name())))
            .collect();
        let peers = self
            .peers
            .iter()
            .zip(&dirs)
            .map(|(p, dir)| {
                settle();
                let m = timed(&format!("{} restore", p.name()), &p.restore_and_sync(dir));
                let ok = sha256_file(&dir.join(NAME)).expect("hash")
                    == sha256_file(&self.image).expect("hash");
                assert!(ok, "{}'s restore differs from the image", p.name());
                let _ = fs::remove_dir_all(dir);
                m
            })
            .collect();
        let target = self.work.join("backstop-restore.raw");
        settle();
        let backstop = timed(
            "backstop restore",
            &format!(
                "{} && sync",
                self.bs(&format!("restore latest {FILE} --target {}", q(&target)))
            ),
        );
        assert!(
            sha256_file(&target).expect("hash") == sha256_file(&self.image).expect("hash"),
            "backstop's restore differs from the image"
        );
        let _ = fs::remove_file(&target);
        let restore = Row {
            name: "restore latest + sync",
            bytes: size,
            backstop,
            peers,
        };
        settle();
        let floor = timed(
            "cp floor",
            &format!(
                "cp --sparse=always {} {} && sync",
                q(&self.image),
                q(&target)
            ),
        );
        let _ = fs::remove_file(&target);
        (vec![dump, restore], floor)
    }

    /// The same full backup into repositories over SFTP: backstop's, then restic's.
    fn sftp(&self) -> Option<(Measure, Measure)> {
        let sshd = sshd::start_sshd(self.work)?;
        let remote = format!("sftp:benchhost:{}", self.work.join("sftp-repo").display());
        let over = |rest: &str| {
            format!(
                "{} repo -r {} --ssh-config {} {rest}",
                q(self.backstop),
                q(Path::new(&remote)),
                q(&sshd.config)
            )
        };
        timed("backstop sftp init", &over("init"));
        settle();
        let ours = timed(
            "backstop sftp full",
            &over(&format!(
                "backup --image {} --format raw --path {FILE}",
                q(&self.image)
            )),
        );
        let restic = Peer::restic_sftp(&self.work.join("restic-sftp-repo"), &sshd.config);
        timed("restic sftp init", &restic.init());
        settle();
        let theirs = timed("restic sftp full", &restic.backup(&self.image));
        Some((ours, theirs))
    }
}

impl Bench<'_> {
    /// The same full backup into repositories in an S3 bucket: backstop's, then restic's.
    fn s3(&self) -> Option<(Measure, Measure)> {
        let server = s3::start(self.work)?;
        let url = format!("s3:{}/bench/backstop", server.endpoint);
        let ours = |rest: &str| {
            format!(
                "{} repo -r {} --no-cache {rest}",
                q(self.backstop),
                q(Path::new(&url))
            )
        };
        timed("backstop s3 init", &ours("init"));
        settle();
        let ours = timed(
            "backstop s3 full",
            &ours(&format!(
                "backup --image {} --format raw --path {FILE}",
                q(&self.image)
            )),
        );
        let restic = Peer::restic_s3(&format!("s3:{}/bench/restic", server.endpoint));
        timed("restic s3 init", &restic.init());
        settle();
        let theirs = timed("restic s3 full", &restic.backup(&self.image));
        Some((ours, theirs))
    }
}

pub fn run(work: &Path, backstop: &Path, size_mib: u64, rustic: Option<PathBuf>) -> Report {
    let image = work.join("disk.raw");
    let size = size_mib * MIB;
    println!(
        "generating a {size_mib} MiB image in {} ...",
        work.display()
    );
    generate(&image, size_mib).expect("generate");
    let mut peers = vec![Peer::restic(&work.join("restic-repo"))];
    if let Some(bin) = rustic {
        peers.push(Peer::rustic(bin, &work.join("rustic-repo")));
    }
    let bench = Bench {
        work,
        image,
        backstop,
        repo: work.join("backstop-repo"),
        peers,
    };
    let mut rows = bench.backups(size);
    let (restores, floor) = bench.restores(size);
    rows.extend(restores);
    println!("verifying the repository, backstop and restic ...");
    let verify = crate::sync::verify_row(backstop, &bench.repo);
    let sftp = bench.sftp();
    let s3 = bench.s3();
    let ceph = crate::ceph::rows(work, backstop, &bench.image, || {
        rewrite(&bench.image, size, 0xbeef).expect("rewrite")
    });
    println!("measuring the CPU limit (hash, zstd, seal from memory) ...");
    let cpu = cpu::limit(&bench.image, &work.join("cpu-repo"));
    Report {
        size_mib,
        peers: bench.peers.iter().map(Peer::version).collect(),
        rows,
        cpu,
        floor,
        sftp,
        s3,
        ceph,
        sync: crate::sync::rows(work, backstop, 1024, 10),
        verify,
    }
}

/// Only the Ceph rows, on a new image of `size_mib` MiB.
pub fn ceph_only(work: &Path, backstop: &Path, size_mib: u64) {
    let image = work.join("disk.raw");
    generate(&image, size_mib).expect("generate");
    let rows = crate::ceph::rows(work, backstop, &image, || {
        rewrite(&image, size_mib * MIB, 0xbeef).expect("rewrite")
    });
    if let Some(rows) = rows {
        rows.print();
    }
}

/// Only the SFTP row and what it is measured against: backstop's full backup to a local
/// path, then over SFTP, then restic's over SFTP, on a new image of `size_mib` MiB.
pub fn sftp_only(work: &Path, backstop: &Path, size_mib: u64) {
    let image = work.join("disk.raw");
    generate(&image, size_mib).expect("generate");
    let bench = Bench {
        work,
        image,
        backstop,
        repo: work.join("backstop-repo"),
        peers: Vec::new(),
    };
    timed("backstop init", &bench.bs("init"));
    settle();
    let local = timed(
        "backstop full",
        &bench.bs(&format!(
            "backup --image {} --format raw --path {FILE}",
            q(&bench.image)
        )),
    );
    let Some((ours, theirs)) = bench.sftp() else {
        println!("no sshd: no SFTP row");
        return;
    };
    println!(
        "full backup of {size_mib} MiB: local {:.2} s; over SFTP {:.2} s ({:+.0} % over local, {:.0} MiB RSS); restic over SFTP {:.2} s: {:.2}x",
        local.seconds,
        ours.seconds,
        (ours.seconds / local.seconds - 1.0) * 100.0,
        ours.rss_mib,
        theirs.seconds,
        theirs.seconds / ours.seconds
    );
}
