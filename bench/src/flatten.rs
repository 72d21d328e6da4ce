//! increment_flatten: backstop's action against the stock driver's recipe.

use crate::data::{MIB, generate, rewrite, sha256_file};
use crate::run::{Measure, PASSWORD, capture, q, timed};
use std::fs;
use std::path::{Path, PathBuf};

/// The two chains of the flatten comparison and where they live.
struct Chains<'a> {
    dir: PathBuf,
    image: PathBuf,
    backstop: &'a Path,
    base_path: PathBuf,
    b_repo: PathBuf,
    r_repo: PathBuf,
    stock_dir: PathBuf,
}

fn file(n: u64) -> String {
    format!("/var/lib/one/datastores/0/7/backup/disk.0.{n}")
}

impl Chains<'_> {
    fn bs(&self, rest: &str) -> String {
        format!("{} repo -r {} {rest}", q(self.backstop), q(&self.b_repo))
    }

    fn restic(&self, rest: &str) -> String {
        format!("restic --no-cache -q -r {} {rest}", q(&self.r_repo))
    }

    /// Builds both chains of `links` increments; returns (backstop's, restic's) short ids.
    fn build(&self, links: u64, size: u64) -> (Vec<String>, Vec<String>) {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for n in 0..links {
            let mut args = format!(
                "backup --image {} --format raw --path {} --tag one-7 --tag backstop-image --json",
                q(&self.image),
                file(n)
            );
            let stock_file = self.stock_dir.join(format!("disk.0.{n}"));
            if n > 0 {
                let extents = self.dir.join("changed.json");
                fs::write(
                    &extents,
                    rewrite(&self.image, size, 1000 + n).expect("rewrite"),
                )
                .expect("extents");
                args.push_str(&format!(
                    " --parent latest --parent-path {} --changed-extents {}",
                    file(n - 1),
                    q(&extents)
                ));
                // The stock increment: a qcow2 delta against the previous file.
                capture(
                    "qemu-img convert -B",
                    &format!(
                        "qemu-img convert -O qcow2 -F qcow2 -B {} {} {}",
                        q(&self.stock_dir.join(format!("disk.0.{}", n - 1))),
                        q(&self.image),
                        q(&stock_file)
                    ),
                );
            } else {
                capture(
                    "qemu-img convert",
                    &format!(
                        "qemu-img convert -O qcow2 {} {}",
                        q(&self.image),
                        q(&stock_file)
                    ),
                );
            }
            let summary: serde_json::Value =
                serde_json::from_str(capture("backstop backup", &self.bs(&args)).trim())
                    .expect("backup json");
            let id = summary["snapshot_id"]
                .as_str()
                .expect("snapshot_id")
                .to_string();
            ours.push(id[..8].to_string());
            let out = capture(
                "restic backup",
                &self.restic(&format!("backup --json --tag one-7 {}", q(&stock_file))),
            );
            let id = out
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find_map(|v| v["snapshot_id"].as_str().map(str::to_string))
                .expect("restic snapshot id");
            theirs.push(id[..8].to_string());
        }
        (ours, theirs)
    }

    /// backstop's increment_flatten, as oned calls it; checks the result against the disk.
    fn backstop_flatten(&self, ours: &[String], links: u64, mib: u64) -> Measure {
        let last = links - 1;
        // backstop: the installed action, as oned calls it.
        let action = self
            .dir
            .join("remotes/datastore/backstop/increment_flatten");
        fs::create_dir_all(action.parent().expect("parent")).expect("remotes");
        std::os::unix::fs::symlink(self.backstop, &action).expect("symlink");
        let incs: String = ours
            .iter()
            .enumerate()
            .map(|(k, src)| {
                format!(
                    "<INCREMENT><ID>{k}</ID><SOURCE>{src}</SOURCE><SIZE>{}</SIZE><TYPE>{}</TYPE></INCREMENT>",
                    if k == 0 { mib } else { mib / 20 },
                    if k == 0 { "FULL" } else { "INCREMENT" }
                )
            })
            .collect();
        let xml = format!(
            "<DS_DRIVER_ACTION_DATA><IMAGE><ID>40</ID><SOURCE>{}</SOURCE><FORMAT>raw</FORMAT>\
             <VMS><ID>7</ID></VMS><TEMPLATE/><BACKUP_INCREMENTS>{incs}</BACKUP_INCREMENTS></IMAGE>\
             <DATASTORE><ID>100</ID><DS_MAD>backstop</DS_MAD><BASE_PATH>{}</BASE_PATH>\
             <TEMPLATE><RESTIC_PASSWORD>{PASSWORD}</RESTIC_PASSWORD></TEMPLATE></DATASTORE>\
             <EXTRA_DATA><KEEP_LAST>1</KEEP_LAST></EXTRA_DATA></DS_DRIVER_ACTION_DATA>",
            ours[0],
            self.base_path.display()
        );
        use base64::Engine;
        let stdin = self.dir.join("flatten.b64");
        fs::write(
            &stdin,
            base64::engine::general_purpose::STANDARD.encode(xml),
        )
        .expect("stdin");
        let b = timed(
            "backstop increment_flatten",
            &format!("{} 40 < {}", q(&action), q(&stdin)),
        );
        let snaps = capture("backstop snapshots", &self.bs("snapshots --json"));
        let snaps: serde_json::Value = serde_json::from_str(&snaps).expect("snapshots json");
        assert_eq!(
            snaps.as_array().map(Vec::len),
            Some(1),
            "backstop's flatten left {snaps}"
        );
        let dumped = self.dir.join("ours.raw");
        capture(
            "backstop dump",
            &format!(
                "{} > {}",
                self.bs(&format!("dump {} {}", ours[last as usize], file(last))),
                q(&dumped)
            ),
        );
        assert_eq!(
            sha256_file(&dumped).expect("hash"),
            sha256_file(&self.image).expect("hash"),
            "backstop's flattened image differs from the disk"
        );
        let _ = fs::remove_file(&dumped);
        b
    }

    /// The stock recipe on restic's chain; checks the merged image against the disk.
    fn stock_flatten(&self, theirs: &[String], links: u64) -> Measure {
        let last = links - 1;
        // The stock recipe (driver contract §5.7), on the same chain.
        let merge = self.dir.join("merge");
        let mut script = format!("set -e\nmkdir -p {}\n", q(&merge));
        for n in 0..links {
            script.push_str(&format!(
                "{} > {}\n",
                self.restic(&format!(
                    "dump {} {}",
                    theirs[n as usize],
                    q(&self.stock_dir.join(format!("disk.0.{n}")))
                )),
                q(&merge.join(format!("disk.0.{n}")))
            ));
        }
        for n in 1..links {
            script.push_str(&format!(
                "qemu-img rebase -u -F qcow2 -b {} {}\n",
                q(&merge.join(format!("disk.0.{}", n - 1))),
                q(&merge.join(format!("disk.0.{n}")))
            ));
        }
        let merged = merge.join(format!("disk.0.{last}"));
        script.push_str(&format!(
            "qemu-img commit -q -f qcow2 -b {} {}\nmv {} {}\n",
            q(&merge.join("disk.0.0")),
            q(&merged),
            q(&merge.join("disk.0.0")),
            q(&merged)
        ));
        script.push_str(&format!(
            "{}\n{}\n",
            self.restic(&format!("backup --force --tag one-7 {}", q(&merged))),
            self.restic(&format!("forget --prune {}", theirs.join(" ")))
        ));
        let r = timed("stock-style flatten", &script);
        capture(
            "qemu-img compare",
            &format!(
                "qemu-img compare -q -f qcow2 -F raw {} {}",
                q(&merged),
                q(&self.image)
            ),
        );
        r
    }
}

/// increment_flatten of a chain of `links` increments of a `mib` disk (KEEP_LAST=1, so all of
/// them merge): backstop's action, as oned calls it, against the stock driver's recipe on the
/// same chain stored the stock way (qcow2 deltas in restic): dump every file, rebase, commit,
/// back up the merged image, forget and prune. Returns (stock, backstop).
pub fn flatten_comparison(
    work: &Path,
    backstop: &Path,
    links: u64,
    mib: u64,
) -> (Measure, Measure) {
    let dir = work.join("flatten");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("flatten dir");
    let image = dir.join("disk.raw");
    println!("flatten: building a chain of {links} increments of a {mib} MiB disk, both ways ...");
    generate(&image, mib).expect("generate");
    let base_path = dir.join("datastore");
    let chains = Chains {
        b_repo: base_path.join("7"),
        r_repo: dir.join("restic-repo"),
        stock_dir: dir.join("var/lib/one/datastores/0/7/backup"),
        base_path,
        image,
        backstop,
        dir: dir.clone(),
    };
    capture("backstop init", &chains.bs("init"));
    capture("restic init", &chains.restic("init"));
    fs::create_dir_all(&chains.stock_dir).expect("stock dir");
    let (ours, theirs) = chains.build(links, mib * MIB);
    let b = chains.backstop_flatten(&ours, links, mib);
    let r = chains.stock_flatten(&theirs, links);
    let _ = fs::remove_dir_all(&dir);
    (r, b)
}
