//! A real single-node Ceph cluster for tests: one monitor and one BlueStore OSD on a sparse
//! file, cephx on, pool size 1, on 127.0.0.1 with ports of its own, under the test's
//! directory; the daemons are children of the test, stopped by their PIDs (OSD first) when it
//! is dropped. No manager daemon: every rbd command works without one. Needs Debian's
//! ceph-mon, ceph-osd and ceph-common (CI installs them).

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const POOL: &str = "one";

#[derive(Debug)]
pub struct Ceph {
    pub dir: PathBuf,
    /// The client configuration (admin key through its keyring).
    pub conf: PathBuf,
    daemons: Vec<(String, Child)>,
}

fn must(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (apt install ceph-mon ceph-osd ceph-common)"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn uuid() -> String {
    must(Command::new("uuidgen").arg("-r"), "uuidgen")
        .trim()
        .to_string()
}

/// Two free ports in a row (the monitor's msgr2 and msgr1 addresses).
fn free_pair() -> u16 {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").expect("port");
        let p = l.local_addr().expect("addr").port();
        drop(l);
        if p < 65000 && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two free ports in a row on 127.0.0.1");
}

impl Ceph {
    pub fn start(parent: &Path) -> Ceph {
        Ceph::start_sized(parent, 4)
    }

    /// With an OSD of `osd_gib` GiB (a sparse file: only what is stored takes space).
    pub fn start_sized(parent: &Path, osd_gib: u64) -> Ceph {
        let dir = parent.join("ceph");
        for sub in ["mon.a", "osd.0", "log", "run"] {
            fs::create_dir_all(dir.join(sub)).expect("ceph dirs");
        }
        let conf = dir.join("ceph.conf");
        let keyring = dir.join("keyring");
        let fsid = uuid();
        let port = free_pair();
        let d = dir.display();
        let mon_host = format!("[v2:127.0.0.1:{port},v1:127.0.0.1:{}]", port + 1);
        fs::write(
            &conf,
            format!(
                "[global]\nfsid = {fsid}\nmon_host = {mon_host}\npublic_addr = 127.0.0.1\n\
                 cluster_addr = 127.0.0.1\nms_bind_ipv6 = false\nauth_cluster_required = cephx\n\
                 auth_service_required = cephx\nauth_client_required = cephx\n\
                 auth_allow_insecure_global_id_reclaim = false\nkeyring = {k}\nrun_dir = {d}/run\n\
                 crash_dir = {d}/run\nlog_file = {d}/log/$name.log\nadmin_socket = {d}/run/$name.asok\n\
                 osd_pool_default_size = 1\nosd_pool_default_min_size = 1\n\
                 osd_pool_default_pg_autoscale_mode = off\nosd_crush_chooseleaf_type = 0\n\
                 mon_allow_pool_size_one = true\nmon_warn_on_pool_no_redundancy = false\n\
                 mon_data_avail_warn = 2\nmon_data_avail_crit = 1\n\
                 [mon]\nmon_data = {d}/$name\n\
                 [osd]\nosd_data = {d}/$name\nosd_objectstore = bluestore\n\
                 bluestore_block_create = true\nbluestore_block_size = {size}\n\
                 bluestore_block_db_create = false\nbluestore_block_wal_create = false\n\
                 osd_memory_target = 939524096\nosd_op_num_shards = 2\n\
                 osd_op_num_threads_per_shard = 1\n",
                k = keyring.display(),
                size = osd_gib << 30,
            ),
        )
        .expect("ceph.conf");
        // One keyring for every entity; the monitor's mkfs takes them all in.
        let authtool = |args: &[&str]| {
            must(
                Command::new("ceph-authtool")
                    .env("CEPH_CONF", "/dev/null")
                    .args(args),
                "ceph-authtool",
            );
        };
        let k = keyring.to_str().expect("utf-8");
        authtool(&[
            "--create-keyring",
            k,
            "--gen-key",
            "-n",
            "mon.",
            "--cap",
            "mon",
            "allow *",
        ]);
        authtool(&[
            k,
            "--gen-key",
            "-n",
            "client.admin",
            "--cap",
            "mon",
            "allow *",
            "--cap",
            "osd",
            "allow *",
            "--cap",
            "mgr",
            "allow *",
        ]);
        authtool(&[
            k,
            "--gen-key",
            "-n",
            "osd.0",
            "--cap",
            "mon",
            "allow profile osd",
            "--cap",
            "osd",
            "allow *",
        ]);
        let c = conf.to_str().expect("utf-8");
        let monmap = dir.join("monmap");
        must(
            Command::new("monmaptool")
                .args(["--create", "--fsid", &fsid, "--addv", "a", &mon_host])
                .arg(&monmap),
            "monmaptool",
        );
        must(
            Command::new("ceph-mon")
                .args(["--mkfs", "-i", "a", "--monmap"])
                .arg(&monmap)
                .args(["--keyring", k, "-c", c]),
            "ceph-mon --mkfs",
        );
        let mut ceph = Ceph {
            dir: dir.clone(),
            conf: conf.clone(),
            daemons: Vec::new(),
        };
        ceph.spawn("mon.a", "ceph-mon", &["-i", "a"]);
        ceph.wait("the monitor", || ceph.ok(&["mon", "stat"]));
        let osd_uuid = uuid();
        let id = ceph.cli(&["osd", "new", &osd_uuid, "0"]);
        assert_eq!(id.trim(), "0", "osd id");
        must(
            Command::new("ceph-osd").args(["-i", "0", "--mkfs", "--osd-uuid", &osd_uuid, "-c", c]),
            "ceph-osd --mkfs",
        );
        ceph.spawn("osd.0", "ceph-osd", &["-i", "0"]);
        ceph.wait("osd.0 up", || {
            ceph.ok(&["osd", "dump", "-f", "json"])
                && ceph
                    .cli(&["osd", "dump", "-f", "json"])
                    .contains("\"osd\":0,\"uuid\"")
                && ceph
                    .cli(&["osd", "stat", "-f", "json"])
                    .contains("\"num_up_osds\":1")
        });
        ceph.cli(&["osd", "pool", "create", POOL, "8", "8"]);
        ceph.rbd(&["pool", "init", POOL]);
        ceph.wait("the rbd pool", || {
            Command::new("timeout")
                .args(["20", "rbd", "-c", c, "ls", "-l", POOL])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        ceph
    }

    fn spawn(&mut self, name: &str, bin: &str, args: &[&str]) {
        let log = fs::File::create(self.dir.join(format!("log/{name}.stdout"))).expect("log");
        let child = Command::new(bin)
            .args(args)
            .arg("-f")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        self.daemons.push((name.to_string(), child));
    }

    fn wait(&self, what: &str, ready: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ready() {
            assert!(
                Instant::now() < deadline,
                "Ceph: {what} not ready within 120 s; logs in {}",
                self.dir.join("log").display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn ok(&self, args: &[&str]) -> bool {
        Command::new("timeout")
            .arg("15")
            .arg("ceph")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `ceph <args>`, which must succeed; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        must(
            Command::new("timeout")
                .arg("30")
                .arg("ceph")
                .arg("-c")
                .arg(&self.conf)
                .args(args),
            &format!("ceph {args:?}"),
        )
    }

    /// `rbd <args>`, which must succeed; its stdout.
    pub fn rbd(&self, args: &[&str]) -> String {
        must(
            Command::new("rbd").arg("-c").arg(&self.conf).args(args),
            &format!("rbd {args:?}"),
        )
    }

    /// `rbd <args>` whose stdout is binary (export to `-`).
    pub fn rbd_bytes(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new("rbd")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .output()
            .expect("rbd");
        assert!(
            out.status.success(),
            "rbd {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// qemu's name for an image of the pool (through qemu's rbd driver).
    pub fn qemu_name(&self, image: &str) -> String {
        format!("rbd:{POOL}/{image}:conf={}", self.conf.display())
    }
}

impl Drop for Ceph {
    fn drop(&mut self) {
        // The OSD first: it tells the monitor it is going; the other way round it waits.
        for (_, child) in self.daemons.iter_mut().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
