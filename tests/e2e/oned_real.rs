//! Through a REAL OpenNebula 7.4.0 front-end: oned, onemonitord, the scheduler, every MAD and
//! the Ruby CLI, built from OpenNebula's own source and run here on loopback by the scripts of a
//! reference directory (install, start, stop by PID). backstop is installed into its remotes
//! tree with its own `install.sh`, and every action runs because oned asked for it: `onevm
//! backup` (the real `one_vmm_exec` over a stand-in hypervisor whose deploy/shutdown do nothing,
//! so BACKUP is oned's own code path), `onevm backup-cancel`, `onevm restore`, `oneimage
//! restore`, `oneimage delete`, KEEP_LAST flattening and `onebackupjob`.
//!
//! Where the reference lives is told by `BACKSTOP_ONED_REFERENCE` (`.ci/run` sets it and fails
//! without one); when it is unset these tests say that they did not run and pass.

use crate::support::{self, BACKSTOP, Outcome};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One oned at a time: monitord's port and the dummy IM's client PID file are machine-wide.
static ONE_ONED: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Where the stock TM scripts look for the host's copy of the remotes tree.
const HOST_TREE: &str = "/var/tmp/one";

/// The datastore password `add-backstop.sh` writes into the backup datastore's template.
const PASSWORD: &str = "backstop-test-pw";

/// The host VMs run on.
pub(crate) enum Host<'a> {
    /// `localhost`: the real exec driver over a stand-in hypervisor (stopped VMs).
    Fake,
    /// `127.0.0.1`: the real kvm driver over this libvirtd URI (running VMs, TCG).
    Kvm(&'a str),
}

/// The reference directory, or None (and a line saying so) when the tests are not to run.
fn reference() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("BACKSTOP_ONED_REFERENCE") else {
        eprintln!(
            "NOT RUN: BACKSTOP_ONED_REFERENCE is unset (the directory holding OpenNebula 7.4.0's \
             install-oned.sh, start-oned.sh and tarball); .ci/run sets it"
        );
        return None;
    };
    let dir = PathBuf::from(dir);
    assert!(
        dir.join("start-oned.sh").is_file(),
        "BACKSTOP_ONED_REFERENCE={} holds no start-oned.sh",
        dir.display()
    );
    Some(dir)
}

/// A running oned with backstop installed, a backup datastore `backstop-local` and a host
/// `localhost` (dummy monitoring, the real exec VMM driver). Stopped by PID when dropped.
pub(crate) struct RealOned {
    _only: std::sync::MutexGuard<'static, ()>,
    reference: PathBuf,
    /// ONE_WORK: `one/` (ONE_LOCATION), backstop's binary and run directory.
    dir: tempfile::TempDir,
    /// Under /var/tmp: oned accepts image paths only below its SAFE_DIRS.
    pub(crate) images: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl RealOned {
    /// `with_tm`: backstop's TM pre/postbackup and restore too (`install.sh --with-tm`).
    pub(crate) fn start(with_tm: bool) -> Option<RealOned> {
        Self::start_on(with_tm, Host::Fake)
    }

    pub(crate) fn start_on(with_tm: bool, host: Host) -> Option<RealOned> {
        let oned = Self::boot(true)?;
        let src = support::repo_root().display().to_string();
        oned.script(
            "add-backstop.sh",
            &[
                ("WITH_TM", if with_tm { "1" } else { "0" }),
                ("BACKSTOP_SRC", &src),
                ("BACKSTOP_BIN", BACKSTOP),
                ("RESTIC_PASSWORD", PASSWORD),
            ],
        );
        match host {
            Host::Fake => oned.add_fake_host(),
            Host::Kvm(uri) => oned.add_kvm_host(uri),
        }
        oned.link_host_tree();
        Some(oned)
    }

    /// A running oned as OpenNebula installs it: backstop neither installed into its remotes
    /// tree nor named in its oned.conf, no host (the install guide's starting point).
    pub(crate) fn start_stock() -> Option<RealOned> {
        Self::boot(false)
    }

    /// Installs and starts oned; `backstop`: with backstop in oned.conf (start-oned.sh's
    /// BACKSTOP=1).
    fn boot(backstop: bool) -> Option<RealOned> {
        let reference = reference()?;
        let only = ONE_ONED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Self::clean_after_a_killed_run(&reference);
        let dir = tempfile::Builder::new()
            .prefix("bsone")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let images = tempfile::Builder::new()
            .prefix("backstop-oned-images")
            .tempdir_in("/var/tmp")
            .expect("tempdir in /var/tmp");
        let one = dir.path().join("one");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let path = format!(
            "{}:{}",
            one.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let env = vec![
            ("ONE_LOCATION".into(), one.display().to_string()),
            (
                "ONE_AUTH".into(),
                one.join("etc/one_auth").display().to_string(),
            ),
            ("ONE_XMLRPC".into(), format!("http://127.0.0.1:{port}/RPC2")),
            ("RUBYLIB".into(), one.join("lib/ruby").display().to_string()),
            ("PATH".into(), path),
            ("ONE_PORT".into(), port.to_string()),
        ];
        let oned = RealOned {
            _only: only,
            reference,
            dir,
            images,
            env,
        };
        oned.script("install-oned.sh", &[]);
        // Datastores monitored every 5 s instead of 300: a new backup datastore has no free
        // space in oned's eyes (and refuses backups) until its first monitor. start-oned.sh
        // configures from oned.conf.orig when it exists.
        let etc = one.join("etc");
        let conf = fs::read_to_string(etc.join("oned.conf")).expect("oned.conf");
        let conf = conf
            .lines()
            .map(|l| {
                if l.starts_with("MONITORING_INTERVAL_DATASTORE") {
                    "MONITORING_INTERVAL_DATASTORE = 5"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        fs::write(etc.join("oned.conf.orig"), conf + "\n").expect("oned.conf.orig");
        // The stand-in hypervisor's driver as the stock kvm one is configured: `-p`, actions
        // for one host run in parallel (without it backup_cancel would wait for the backup).
        let extra = oned.dir.path().join("oned-extra.conf");
        fs::write(
            &extra,
            "VM_MAD = [ NAME = \"fakehvp\", SUNSTONE_NAME = \"FakeHV\", EXECUTABLE = \"one_vmm_exec\",\n  \
             ARGUMENTS = \"-t 15 -r 0 fakehv -p -l deploy,shutdown,cancel,reboot,reset,save,restore\",\n  \
             TYPE = \"xml\", KEEP_SNAPSHOTS = \"no\" ]\n",
        )
        .expect("oned-extra.conf");
        oned.start_script(backstop);
        Some(oned)
    }

    /// Runs start-oned.sh (oned.conf made again from oned.conf.orig); `backstop` as in
    /// [`Self::boot`].
    fn start_script(&self, backstop: bool) {
        let one = self.one();
        let remotes = one.join("var/remotes").display().to_string();
        let extra = self
            .dir
            .path()
            .join("oned-extra.conf")
            .display()
            .to_string();
        // start-oned.sh starts oned as a background job of a non-interactive shell, which
        // ignores SIGINT and SIGQUIT in it, in every MAD and every script they run; the stock
        // backup_qcow2.rb stops its qemu-nbd with SIGQUIT and would wait for ever. Its `setsid`
        // is found through PATH: this one puts the two signals back to their defaults first
        // (what a systemd-started oned has).
        let wrap = self.dir.path().join("wrap");
        fs::create_dir_all(&wrap).expect("wrap");
        support::write_exec(
            &wrap.join("setsid"),
            "#!/usr/bin/perl\n$SIG{INT} = 'DEFAULT';\n$SIG{QUIT} = 'DEFAULT';\n\
             exec { '/usr/bin/setsid' } 'setsid', @ARGV or die \"setsid: $!\\n\";\n",
        );
        let path = format!("{}:{}", wrap.display(), self.var("PATH"));
        // The shell TM scripts put /usr/bin before the fake ssh in PATH (scripts_common.sh)
        // but take $SSH when it is set: the fake one, for the host without an sshd.
        let ssh = one.join("fakessh/ssh").display().to_string();
        self.script(
            "start-oned.sh",
            &[
                ("PATH", &path),
                ("SSH", &ssh),
                ("BACKSTOP", if backstop { "1" } else { "0" }),
                ("FAKE_SSH", "1"),
                ("ONE_EXTRA_CONF", &extra),
                // All in one: the host's copy of the remotes is the front-end's.
                ("ONE_HOST_REMOTES", &remotes),
            ],
        );
    }

    /// Stops oned (by PID, as when dropped) and starts it again from oned.conf.orig, which a
    /// test may have changed as an operator changes oned.conf; for an oned of
    /// [`Self::start_stock`] (start-oned.sh adds nothing of backstop's).
    pub(crate) fn restart(&self) {
        let _ = Command::new(self.reference.join("stop-oned.sh"))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output();
        wait_gone(self.dir.path());
        self.start_script(false);
    }

    /// The oned.conf start-oned.sh makes the live one from.
    pub(crate) fn conf_orig(&self) -> PathBuf {
        self.one().join("etc/oned.conf.orig")
    }

    /// The remotes tree.
    pub(crate) fn remotes(&self) -> PathBuf {
        self.one().join("var/remotes")
    }

    /// Host `localhost`: dummy monitoring, the stand-in hypervisor's actions from the reference
    /// under the real exec driver.
    fn add_fake_host(&self) {
        let vmm = self.one().join("var/remotes/vmm/fakehv");
        fs::create_dir_all(&vmm).expect("vmm/fakehv");
        for entry in fs::read_dir(self.reference.join("fixtures/vmm-fakehv")).expect("fixtures") {
            let entry = entry.expect("fixture");
            let to = vmm.join(entry.file_name());
            fs::copy(entry.path(), &to).expect("copy a fixture");
            fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        self.add_fake_host_named("localhost");
    }

    /// One more host of the stand-in hypervisor (`127.0.0.2` ...: the fake ssh runs its
    /// commands on this machine too, and logs the host it was asked for).
    pub(crate) fn add_fake_host_named(&self, name: &str) {
        self.cli_ok("onehost", &["create", name, "-i", "dummy", "-v", "fakehvp"]);
        self.wait(&format!("host {name} monitored"), 120, None, || {
            first(&self.xml("onehost", name), "STATE") == "2"
        });
    }

    /// What the fake ssh was asked to run, a line per call (`<time> ssh <host> <command>`).
    pub(crate) fn ssh_log(&self) -> String {
        fs::read_to_string(self.one().join("var/fakessh.log")).unwrap_or_default()
    }

    /// The environment OpenNebula's tools use with this oned (ONE_XMLRPC, ONE_AUTH ...).
    pub(crate) fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// Host `127.0.0.1`: dummy monitoring, OpenNebula's own kvm driver (VM_MAD `qemu`: TCG)
    /// over the libvirtd at `uri` (kvmrc's LIBVIRT_URI, which backstop's host steps read too).
    fn add_kvm_host(&self, uri: &str) {
        let kvmrc = self.one().join("var/remotes/etc/vmm/kvm/kvmrc");
        let text = fs::read_to_string(&kvmrc).expect("kvmrc");
        let text: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with("export LIBVIRT_URI=") {
                    format!("export LIBVIRT_URI=\"{uri}\"")
                } else {
                    l.to_string()
                }
            })
            .collect();
        fs::write(&kvmrc, text.join("\n") + "\n").expect("kvmrc");
        self.cli_ok(
            "onehost",
            &["create", "127.0.0.1", "-i", "dummy", "-v", "qemu"],
        );
        let t = self.template("host.tmpl", "EMULATOR = \"/usr/bin/qemu-system-x86_64\"\n");
        self.cli_ok("onehost", &["update", "127.0.0.1", &t, "--append"]);
        self.wait("host 127.0.0.1 monitored", 120, None, || {
            first(&self.xml("onehost", "127.0.0.1"), "STATE") == "2"
        });
    }

    /// The stock TM scripts run their helpers from the host's copy of the remotes at the
    /// hard-coded /var/tmp/one (`tm/lib/backup_qcow2.rb`). This machine is the host: a link
    /// to the front-end's tree while the test runs (one oned at a time); one a crashed test left
    /// (pointing nowhere) is replaced, anything else there is refused.
    fn link_host_tree(&self) {
        let at = Path::new(HOST_TREE);
        assert!(
            fs::symlink_metadata(at).is_err(),
            "{HOST_TREE} exists (a host's copy of OpenNebula's remotes?): the real-oned tests \
             need it for themselves; move it away"
        );
        std::os::unix::fs::symlink(self.one().join("var/remotes"), at).expect("link /var/tmp/one");
    }

    /// What a killed test run (SIGKILL, a CI timeout) left: its /var/tmp/one link and, when
    /// the link leads into a tree of ours, that tree's oned (stopped by its own stop-oned.sh,
    /// by PID) and the tree itself.
    fn clean_after_a_killed_run(reference: &Path) {
        let at = Path::new(HOST_TREE);
        let Ok(target) = fs::read_link(at) else {
            return;
        };
        // <dir>/one/var/remotes, <dir> = /tmp/bsone*
        let one = target
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf);
        let dir = one.as_deref().and_then(Path::parent).map(Path::to_path_buf);
        let ours = dir.as_deref().is_some_and(|d| {
            d.parent() == Some(Path::new("/tmp"))
                && d.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("bsone"))
        });
        if ours && let (Some(one), Some(dir)) = (one, dir) {
            eprintln!("stopping what a killed run left in {}", dir.display());
            let _ = Command::new(reference.join("stop-oned.sh"))
                .env("ONE_LOCATION", &one)
                .output();
            wait_gone(&dir);
            let _ = fs::remove_dir_all(&dir);
            let _ = fs::remove_file(at);
        } else if !at.exists() {
            let _ = fs::remove_file(at);
        }
    }

    fn var(&self, name: &str) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    fn one(&self) -> PathBuf {
        self.dir.path().join("one")
    }

    fn script(&self, name: &str, extra: &[(&str, &str)]) -> String {
        let out = Command::new(self.reference.join(name))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            out.status.success(),
            "{name} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The end of oned's log, for failure messages.
    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.one().join("var/oned.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- oned.log (end) ---\n{}",
            lines[lines.len().saturating_sub(25)..].join("\n")
        )
    }

    /// A CLI command of this oned (onevm, oneimage ...).
    pub(crate) fn cli(&self, program: &str, args: &[&str]) -> Outcome {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        support::run_env(self.one().join("bin").join(program), args, b"", &env)
    }

    pub(crate) fn cli_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.cli(program, args);
        assert_eq!(
            out.code,
            Some(0),
            "{program} {args:?}: {}{}\n{}",
            out.stdout,
            out.stderr,
            self.log_tail()
        );
        out.stdout
    }

    /// `<cli> show <id> -x`.
    pub(crate) fn xml(&self, program: &str, id: &str) -> String {
        self.cli_ok(program, &["show", id, "-x"])
    }

    /// A template file in the work directory, for `create`/`update` commands.
    pub(crate) fn template(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        fs::write(&path, text).expect("template");
        path.display().to_string()
    }

    /// Polls `done` every 300 ms until it holds; panics after `secs` with what it waited for,
    /// the VM's log when one is named, and the end of oned's log.
    pub(crate) fn wait(&self, what: &str, secs: u64, vm: Option<u64>, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !done() {
            if Instant::now() > deadline {
                let vm_log = vm.map(|id| self.vm_log(id)).unwrap_or_default();
                panic!(
                    "waited {secs} s for {what}\n--- vm.log ---\n{vm_log}\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// What oned logged about a VM.
    pub(crate) fn vm_log(&self, vm: u64) -> String {
        fs::read_to_string(self.one().join(format!("var/vms/{vm}/vm.log"))).unwrap_or_default()
    }

    /// (STATE, LCM_STATE) of a VM.
    pub(crate) fn vm_state(&self, vm: u64) -> (String, String) {
        let xml = self.xml("onevm", &vm.to_string());
        (first(&xml, "STATE"), first(&xml, "LCM_STATE"))
    }

    /// A datastore's id, once oned has monitored it (FREE_MB > 0).
    pub(crate) fn datastore(&self, name: &str) -> String {
        let id = first(&self.xml("onedatastore", name), "ID");
        self.wait(&format!("the first monitor of {name}"), 60, None, || {
            first(&self.xml("onedatastore", name), "FREE_MB")
                .parse::<u64>()
                .is_ok_and(|f| f > 0)
        });
        id
    }

    /// A running VM (see [`Self::running_vm`]) powered off (the stand-in hypervisor does
    /// nothing). Returns the VM's id.
    pub(crate) fn stopped_vm(&self, name: &str, image: &Path) -> u64 {
        let vm = self.running_vm(name, image);
        self.cli_ok("onevm", &["poweroff", "--hard", &vm.to_string()]);
        self.wait_poweroff(vm);
        vm
    }

    /// Registers `image` (qcow2) in the image datastore and instantiates a VM with it as its
    /// one disk, backed up in INCREMENT mode; returns the VM's id once it runs.
    pub(crate) fn running_vm(&self, name: &str, image: &Path) -> u64 {
        self.vm_from(
            name,
            &[(name, image)],
            &format!("DISK = [ IMAGE = \"{name}\" ]\nBACKUP_CONFIG = [ MODE = \"INCREMENT\" ]\n"),
        )
    }

    /// Registers each (name, qcow2 file) of `images` in the image datastore, creates a template
    /// `name` of 128 MiB, 0.1 CPU and `body` (its DISKs, BACKUP_CONFIG ...), and instantiates
    /// it; returns the VM's id once it runs.
    pub(crate) fn vm_from(&self, name: &str, images: &[(&str, &Path)], body: &str) -> u64 {
        self.datastore("default");
        for (image, file) in images {
            let path = file.display().to_string();
            let img = self.cli_ok(
                "oneimage",
                &[
                    "create", "-d", "1", "--name", image, "--path", &path, "--format", "qcow2",
                ],
            );
            let img = id_line(&img);
            self.wait(&format!("image {image} ready"), 90, None, || {
                first(&self.xml("oneimage", &img), "STATE") == "1"
            });
        }
        let t = self.template(
            &format!("{name}.tmpl"),
            &format!("NAME = \"{name}\"\nMEMORY = 128\nCPU = 0.1\n{body}"),
        );
        self.cli_ok("onetemplate", &["create", &t]);
        let out = self.cli_ok("onetemplate", &["instantiate", name]);
        let vm: u64 = out
            .split_whitespace()
            .last()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no VM id in {out}"));
        self.wait(&format!("VM {vm} running"), 120, Some(vm), || {
            self.vm_state(vm).1 == "3"
        });
        vm
    }

    /// Waits for POWEROFF with no operation under way (STATE 8, LCM_STATE 0).
    pub(crate) fn wait_poweroff(&self, vm: u64) {
        self.wait(&format!("VM {vm} in POWEROFF"), 120, Some(vm), || {
            self.vm_state(vm) == ("8".into(), "0".into())
        });
    }

    /// The VM's disk 0 in the system datastore (a link to the current file).
    pub(crate) fn vm_disk(&self, vm: u64) -> PathBuf {
        self.vm_disk_n(vm, 0)
    }

    /// The VM's disk `id` in the system datastore.
    pub(crate) fn vm_disk_n(&self, vm: u64, id: u32) -> PathBuf {
        self.one().join(format!("var/datastores/0/{vm}/disk.{id}"))
    }

    /// A backup datastore's directory (its BASE_PATH).
    pub(crate) fn base_path(&self, ds: &str) -> PathBuf {
        self.one().join("var/datastores").join(ds)
    }

    /// Runs `onevm backup` and waits for the VM's LAST_INCREMENT_ID to become `increment`
    /// (a FULL: 0) and the VM to be back in POWEROFF. `extra`: `--reset` and the like.
    pub(crate) fn backup(&self, vm: u64, ds: &str, increment: u64, extra: &[&str]) {
        self.backup_in(vm, ds, increment, extra, ("8", "0"));
    }

    /// [`Self::backup`], the VM back in (STATE, LCM_STATE) `state` afterwards.
    pub(crate) fn backup_in(
        &self,
        vm: u64,
        ds: &str,
        increment: u64,
        extra: &[&str],
        state: (&str, &str),
    ) {
        let id = vm.to_string();
        let mut args = vec!["backup", id.as_str(), "-d", ds];
        args.extend_from_slice(extra);
        let done = self.backups_done(vm);
        self.cli_ok("onevm", &args);
        self.wait_backup(vm, done + 1, increment, state);
    }

    /// How many backups of the VM oned recorded as made (its log's success lines).
    pub(crate) fn backups_done(&self, vm: u64) -> usize {
        self.vm_log(vm)
            .matches("VM backup successfully created.")
            .count()
    }

    /// Waits for the VM's `done`-th successful backup, with LAST_INCREMENT_ID `increment` and
    /// the VM back in (STATE, LCM_STATE) `state`.
    pub(crate) fn wait_backup(&self, vm: u64, done: usize, increment: u64, state: (&str, &str)) {
        self.wait(
            &format!("VM {vm}'s backup {done}, increment {increment}"),
            180,
            Some(vm),
            || {
                let xml = self.xml("onevm", &vm.to_string());
                self.backups_done(vm) >= done
                    && first(&xml, "LAST_INCREMENT_ID") == increment.to_string()
                    && first(&xml, "STATE") == state.0
                    && first(&xml, "LCM_STATE") == state.1
            },
        );
        assert_eq!(self.backups_done(vm), done, "{}", self.vm_log(vm));
    }

    /// Whether the TM action oned runs for `action` of the system datastore's TM (`local`) is
    /// backstop's: `--with-tm` put it there and kept the stock script beside it as
    /// `<action>.backstop-stock`, which it is not.
    pub(crate) fn tm_action_is_backstops(&self, action: &str) -> bool {
        let dir = self.one().join("var/remotes/tm/local");
        let ours = fs::read(dir.join(action)).expect("the TM action");
        fs::read(dir.join(format!("{action}.backstop-stock"))).is_ok_and(|stock| stock != ours)
    }
}

impl Drop for RealOned {
    fn drop(&mut self) {
        if fs::read_link(HOST_TREE).is_ok_and(|t| t.starts_with(self.dir.path())) {
            let _ = fs::remove_file(HOST_TREE);
        }
        // stop-oned.sh stops oned by its PID, then its children and this install's orphans
        // (TERM, without waiting for them): the next test's oned needs monitord's port.
        let _ = Command::new(self.reference.join("stop-oned.sh"))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output();
        wait_gone(self.dir.path());
    }
}

/// Waits (up to 30 s) until no process's command line names `dir`.
fn wait_gone(dir: &Path) {
    let needle = dir.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = fs::read_dir("/proc")
            .map(|entries| {
                entries.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                        && fs::read(e.path().join("cmdline"))
                            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
                })
            })
            .unwrap_or(false);
        if !left || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every value of `<tag>` in an XML document oned wrote (CDATA unwrapped), in order.
pub(crate) fn values(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else {
            break;
        };
        let v = &after[..end];
        let v = v
            .strip_prefix("<![CDATA[")
            .and_then(|v| v.strip_suffix("]]>"))
            .unwrap_or(v);
        out.push(v.to_string());
        rest = &after[end + close.len()..];
    }
    out
}

pub(crate) fn first(xml: &str, tag: &str) -> String {
    values(xml, tag).into_iter().next().unwrap_or_default()
}

/// The id in a CLI answer `ID: 12`.
pub(crate) fn id_line(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("ID: "))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no ID in {out}"))
}

/// A 64 MiB qcow2 with data in three places.
pub(crate) fn make_image(path: &Path) {
    let p = path.to_str().expect("utf-8");
    support_ok("qemu-img", &["create", "-q", "-f", "qcow2", p, "64M"]);
    write_pattern(path, 0x5a, 0, 8 << 20);
    write_pattern(path, 0x33, 40 << 20, 4 << 20);
}

pub(crate) fn write_pattern(disk: &Path, pattern: u8, offset: u64, len: u64) {
    let p = disk.to_str().expect("utf-8");
    support_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("write -P {pattern:#x} {offset} {len}"),
            p,
        ],
    );
}

fn support_ok(program: &str, args: &[&str]) -> String {
    let out = support::run(program, args, b"");
    assert_eq!(out.code, Some(0), "{program} {args:?}: {}", out.stderr);
    out.stdout
}

/// The disk as it is now, raw (the VM is off, nothing writes it).
pub(crate) fn raw_copy(disk: &Path, to: &Path) {
    support_ok(
        "qemu-img",
        &[
            "convert",
            "-U",
            "-f",
            "qcow2",
            "-O",
            "raw",
            disk.to_str().expect("utf-8"),
            to.to_str().expect("utf-8"),
        ],
    );
}

pub(crate) fn restic(repo: &Path, args: &[&str]) -> Vec<u8> {
    let out = backstop_testkit::restic::local(repo, PASSWORD, args);
    assert!(
        out.status.success(),
        "restic {args:?} on {}: {}",
        repo.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The ids of the repository's snapshots, oldest first.
pub(crate) fn snapshots(repo: &Path) -> Vec<String> {
    let json = restic(repo, &["snapshots", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json).expect("snapshots json");
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["short_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Plain restic dumps disk 0 of `snapshot`; it must equal `expected` byte for byte.
pub(crate) fn assert_restic_dump(repo: &Path, snapshot: &str, expected: &Path) {
    assert_restic_dump_disk(repo, snapshot, 0, expected);
}

/// The disk files (`disk.<id>.<increment>`) a snapshot holds, by their paths.
fn snapshot_disks(repo: &Path, snapshot: &str) -> Vec<String> {
    let json = restic(repo, &["snapshots", "--json", snapshot]);
    let v: serde_json::Value = serde_json::from_slice(&json).expect("snapshots json");
    v[0]["paths"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(|x| x.as_str())
                .filter(|x| x.rsplit('/').next().is_some_and(|n| n.starts_with("disk.")))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Plain restic dumps disk `disk` of `snapshot`; it must equal `expected` byte for byte.
fn assert_restic_dump_disk(repo: &Path, snapshot: &str, disk: u32, expected: &Path) {
    let prefix = format!("disk.{disk}.");
    let path = snapshot_disks(repo, snapshot)
        .into_iter()
        .find(|x| x.rsplit('/').next().is_some_and(|n| n.starts_with(&prefix)))
        .unwrap_or_else(|| panic!("no disk {disk} in snapshot {snapshot}"));
    let dumped = restic(repo, &["dump", snapshot, &path]);
    let want = fs::read(expected).expect("expected image");
    assert!(
        dumped == want,
        "restic dump {snapshot} {path} differs from {} ({} and {} bytes)",
        expected.display(),
        dumped.len(),
        want.len()
    );
}

/// (ID, TYPE, SOURCE, SIZE in MiB) of each increment of a backup image, in order.
pub(crate) fn increments(image_xml: &str) -> Vec<(String, String, String, u64)> {
    values(image_xml, "INCREMENT")
        .iter()
        .map(|i| {
            (
                first(i, "ID"),
                first(i, "TYPE"),
                first(i, "SOURCE"),
                first(i, "SIZE").parse().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

/// With backstop's TM (`--with-tm`): a stopped VM's FULL and two CBT increments through `onevm
/// backup` each dump byte-exact with plain restic, the increments' sizes are what changed;
/// KEEP_LAST=2 makes oned flatten the chain (the kept snapshots still dump byte-exact);
/// `oneimage restore` (the image datastore's stock cp calls the downloader through
/// `datastore/fs/..`) gives an image equal to the point, for the newest and an older increment;
/// `onevm restore` puts the disk back in place; `onevm backup --reset` starts a new image with a
/// FULL; `oneimage delete` removes the deleted image's snapshots and keeps the other's.
#[test]
fn real_oned_backs_up_flattens_restores_and_deletes_a_stopped_vm() {
    let Some(o) = RealOned::start(true) else {
        return;
    };
    let ds = o.datastore("backstop-local");
    let image = o.images.path().join("a.qcow2");
    make_image(&image);
    let vm = o.stopped_vm("a", &image);
    let disk = o.vm_disk(vm);
    let repo = o.base_path(&ds).join(vm.to_string());
    let expected = |k: u64| o.images.path().join(format!("expected-{k}.raw"));
    // Escrow (docs/escrow.md) asked for in oned's datastore template: the repository the
    // first backup makes gets an escrow key sealed to that public key.
    let identity = o.images.path().join("escrow-identity.txt");
    let keygen = support::run(
        BACKSTOP,
        &[
            "repo",
            "escrow",
            "keygen",
            "--output",
            identity.to_str().expect("utf-8"),
        ],
        b"",
    );
    assert_eq!(keygen.code, Some(0), "{keygen:?}");
    let recipient = keygen.stdout.trim().to_string();
    let escrow = o.template(
        "escrow.tmpl",
        &format!("BACKSTOP_ESCROW_RECIPIENTS = \"{recipient}\"\n"),
    );
    o.cli_ok("onedatastore", &["update", &ds, &escrow, "--append"]);

    // FULL and two increments, each changing a few MiB.
    let changes = [(0x77u8, 16u64 << 20, 2u64 << 20), (0x21, 30 << 20, 1 << 20)];
    for k in 0..3u64 {
        if k > 0 {
            let (pattern, offset, len) = changes[k as usize - 1];
            write_pattern(&disk, pattern, offset, len);
        }
        raw_copy(&disk, &expected(k));
        o.backup(vm, &ds, k, &[]);
    }
    let vm_xml = o.xml("onevm", &vm.to_string());
    let bimg = first(&values(&vm_xml, "BACKUP_IDS")[0], "ID");
    let incs = increments(&o.xml("oneimage", &bimg));
    assert_eq!(
        incs.iter().map(|i| i.1.as_str()).collect::<Vec<_>>(),
        ["FULL", "INCREMENT", "INCREMENT"],
        "{incs:?}"
    );
    // oned records what the datastore action said it stored: 12 MiB of data, then 2 and 1.
    assert!(incs[0].3 >= 12, "{incs:?}");
    assert!(
        incs[1].3 <= 3 && incs[2].3 <= 2,
        "increments read more than changed: {incs:?}"
    );
    assert_eq!(snapshots(&repo).len(), 3);
    for (k, inc) in incs.iter().enumerate() {
        assert_restic_dump(&repo, &inc.2, &expected(k as u64));
    }
    let escrow_keys: Vec<String> = fs::read_dir(repo.join("keys"))
        .expect("keys")
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter(|text| text.contains("backstop_escrow"))
        .collect();
    assert_eq!(escrow_keys.len(), 1, "one escrow key, whatever the backups");
    assert!(escrow_keys[0].contains(&recipient), "{}", escrow_keys[0]);

    // KEEP_LAST=2: after the fourth point oned flattens the two oldest away.
    let bc = o.template(
        "bc.tmpl",
        "BACKUP_CONFIG = [ MODE = \"INCREMENT\", KEEP_LAST = \"2\" ]\n",
    );
    o.cli_ok("onevm", &["updateconf", &vm.to_string(), &bc]);
    // The fourth point with BACKUP_PULL (docs/pull-mode.md), as oned drives it: the
    // datastore's backup runs host-export (here on this machine, no forward) and writes the
    // repository itself; its dump and its restore below are checked as every other point's.
    // (oned keeps no INFO line of a successful action, so the mode itself is not seen here;
    // tests/e2e/pull.rs shows it.)
    let pull = o.template("pull.tmpl", "BACKUP_PULL = \"YES\"\n");
    o.cli_ok("onedatastore", &["update", &ds, &pull, "--append"]);
    write_pattern(&disk, 0x4c, 50 << 20, 1 << 20);
    raw_copy(&disk, &expected(3));
    o.backup(vm, &ds, 3, &[]);
    o.wait(
        "KEEP_LAST flattening to two increments",
        60,
        Some(vm),
        || increments(&o.xml("oneimage", &bimg)).len() == 2,
    );
    let kept = increments(&o.xml("oneimage", &bimg));
    assert_eq!(
        kept.iter()
            .map(|i| (i.0.as_str(), i.1.as_str()))
            .collect::<Vec<_>>(),
        [("2", "FULL"), ("3", "INCREMENT")],
        "{kept:?}"
    );
    assert_eq!(
        snapshots(&repo),
        [kept[0].2.clone(), kept[1].2.clone()],
        "the flattened snapshots are removed, the kept ones untouched"
    );
    assert_restic_dump(&repo, &kept[0].2, &expected(2));
    assert_restic_dump(&repo, &kept[1].2, &expected(3));

    // oneimage restore: the newest point, then increment 2, each into a new image.
    for (increment, want) in [(None, 3u64), (Some("2"), 2)] {
        let before: Vec<String> = values(&o.cli_ok("oneimage", &["list", "-x"]), "IMAGE")
            .iter()
            .map(|i| first(i, "ID"))
            .collect();
        let mut args = vec!["restore", bimg.as_str(), "-d", "1"];
        if let Some(i) = increment {
            args.extend(["--increment", i]);
        }
        o.cli_ok("oneimage", &args);
        let new_image = || {
            let list = o.cli_ok("oneimage", &["list", "-x"]);
            values(&list, "IMAGE")
                .into_iter()
                .find(|i| !before.contains(&first(i, "ID")) && first(i, "TYPE") == "0")
        };
        o.wait("the restored image", 120, None, || {
            new_image().is_some_and(|i| first(&i, "STATE") == "1")
        });
        let restored = new_image().expect("restored image");
        let source = PathBuf::from(first(&restored, "SOURCE"));
        crate::stock::compare(&source, &expected(want));
    }

    // onevm restore in place: the disk, scribbled over, comes back as the newest point.
    write_pattern(&disk, 0x99, 0, 4 << 20);
    o.cli_ok("onevm", &["restore", &vm.to_string(), &bimg]);
    o.wait("the in-place restore", 120, Some(vm), || {
        let xml = o.xml("onevm", &vm.to_string());
        first(&xml, "STATE") == "8" && first(&xml, "LCM_STATE") == "0" && {
            let out = Command::new("qemu-img")
                .args(["compare", "-q", "-U", "-f", "qcow2", "-F", "raw"])
                .arg(&disk)
                .arg(expected(3))
                .output();
            out.is_ok_and(|o| o.status.success())
        }
    });

    // onevm backup --reset: oned asks for a new chain; backstop stores a FULL (it reads the
    // whole disk, not what changed since increment 3) as the first point of a new image.
    write_pattern(&disk, 0x17, 60 << 20, 1 << 20);
    raw_copy(&disk, &expected(4));
    o.backup(vm, &ds, 0, &["--reset"]);
    let ids = values(
        &values(&o.xml("onevm", &vm.to_string()), "BACKUP_IDS")[0],
        "ID",
    );
    let fresh = ids
        .iter()
        .find(|i| **i != bimg)
        .unwrap_or_else(|| panic!("no new backup image after --reset: {ids:?}"))
        .clone();
    let chain = increments(&o.xml("oneimage", &fresh));
    assert_eq!(chain.len(), 1, "{chain:?}");
    assert_eq!(chain[0].1, "FULL", "{chain:?}");
    assert!(
        chain[0].3 >= 13,
        "a reset read only what changed: {chain:?}"
    );
    assert_restic_dump(&repo, &chain[0].2, &expected(4));

    // oneimage delete: the datastore's rm forgets every snapshot of that image, and only those.
    o.cli_ok("oneimage", &["delete", &bimg]);
    o.wait("the backup image deleted", 60, None, || {
        o.cli("oneimage", &["show", &bimg]).code != Some(0)
    });
    assert_eq!(snapshots(&repo), [chain[0].2.clone()]);
    assert_backstop_tm_ran(&o, vm, "prebackup");
}

/// Side by side (backstop's datastore, the stock TM scripts): `onevm backup-cancel` stops a
/// backup while the datastore action writes (held back by RESTIC_BWLIMIT, which limits a local
/// repository as restic does): the VM is back in POWEROFF, no image, no snapshot and no lock
/// remain, and the next backup works; an OpenNebula backup job (`onebackupjob backup`) backs a
/// VM up into its job's repository (`job_<id>`), FULL then an increment, both byte-exact with
/// plain restic.
#[test]
fn real_oned_cancels_a_backup_and_runs_backup_jobs_with_the_stock_tm() {
    let Some(o) = RealOned::start(false) else {
        return;
    };
    let ds = o.datastore("backstop-local");
    let slow = o.template(
        "slow.tmpl",
        &format!(
            "NAME = \"backstop-slow\"\nTYPE = \"BACKUP_DS\"\nDS_MAD = \"backstop\"\nTM_MAD = \"-\"\n\
             RESTIC_PASSWORD = \"{PASSWORD}\"\nRESTIC_BWLIMIT = \"1024\"\n"
        ),
    );
    o.cli_ok("onedatastore", &["create", &slow]);
    let slow = o.datastore("backstop-slow");

    // 24 MiB that do not compress or deduplicate: about 25 s at 1 MiB/s.
    let image = o.images.path().join("b.qcow2");
    let raw = o.images.path().join("b.raw");
    fs::write(&raw, support::noise(24 << 20, 7)).expect("noise");
    support_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw.to_str().expect("utf-8"),
            image.to_str().expect("utf-8"),
        ],
    );
    support_ok(
        "qemu-img",
        &[
            "resize",
            "-q",
            "-f",
            "qcow2",
            image.to_str().expect("utf-8"),
            "64M",
        ],
    );
    let vm = o.stopped_vm("b", &image);
    let id = vm.to_string();
    let repo = o.base_path(&slow).join(&id);
    o.cli_ok("onevm", &["backup", &id, "-d", &slow]);
    // The datastore action is writing once the repository holds a lock.
    o.wait(
        "the backup writing into the slow datastore",
        120,
        Some(vm),
        || fs::read_dir(repo.join("locks")).is_ok_and(|mut d| d.next().is_some()),
    );
    o.cli_ok("onevm", &["backup-cancel", &id]);
    o.wait_poweroff(vm);
    let xml = o.xml("onevm", &id);
    assert!(
        values(&xml, "BACKUP_IDS")
            .iter()
            .all(|b| first(b, "ID").is_empty()),
        "a cancelled backup left an image: {xml}\n{}",
        o.vm_log(vm)
    );
    // Stopped by the cancel, not failed on its own: backstop's backup says so, and oned ran
    // backup_cancel successfully.
    let log = o.vm_log(vm);
    assert!(
        log.contains(&format!("the backup of VM {vm} was cancelled"))
            && log.contains("Successfully execute datastore driver operation: backup_cancel."),
        "{log}"
    );
    o.wait("the cancelled backup's lock removed", 30, Some(vm), || {
        fs::read_dir(repo.join("locks")).is_ok_and(|mut d| d.next().is_none())
    });
    assert_eq!(snapshots(&repo), Vec::<String>::new());
    restic(&repo, &["check"]);

    // A backup job: FULL, then an increment, in the job's own repository.
    let disk = o.vm_disk(vm);
    let bj = o.template(
        "bj.tmpl",
        &format!(
            "NAME = \"nightly\"\nBACKUP_VMS = \"{vm}\"\nDATASTORE_ID = {ds}\nMODE = \"INCREMENT\"\n"
        ),
    );
    let job = id_line(&o.cli_ok("onebackupjob", &["create", &bj]));
    let job_repo = o.base_path(&ds).join(format!("job_{job}"));
    for k in 0..2u64 {
        if k > 0 {
            write_pattern(&disk, 0x42, 8 << 20, 2 << 20);
        }
        let want = o.images.path().join(format!("job-{k}.raw"));
        raw_copy(&disk, &want);
        let done = o.backups_done(vm);
        o.cli_ok("onebackupjob", &["backup", &job]);
        o.wait_backup(vm, done + 1, k, ("8", "0"));
        let bimg = first(&values(&o.xml("onevm", &id), "BACKUP_IDS")[0], "ID");
        let incs = increments(&o.xml("oneimage", &bimg));
        assert_eq!(incs.len(), k as usize + 1, "{incs:?}");
        assert_restic_dump(&job_repo, &incs[k as usize].2, &want);
    }
    // Side by side: the TM actions oned ran are the stock ones.
    assert!(!o.tm_action_is_backstops("prebackup"));
    assert!(
        o.vm_log(vm)
            .contains("Successfully execute transfer manager driver operation: prebackup.")
    );
}

/// Destroys every running domain of a libvirtd when dropped.
struct Domains<'a> {
    uri: &'a str,
}

impl Drop for Domains<'_> {
    fn drop(&mut self) {
        let Ok(out) = Command::new("virsh")
            .args(["--connect", self.uri, "list", "--name"])
            .output()
        else {
            return;
        };
        for name in String::from_utf8_lossy(&out.stdout).lines() {
            let name = name.trim();
            if !name.is_empty() {
                let _ = Command::new("virsh")
                    .args(["--connect", self.uri, "destroy", name])
                    .output();
            }
        }
    }
}

/// backstop's TM actions, not the stock ones, did the backups: oned ran the system datastore
/// TM's prebackup (and prebackup_live) from the remotes tree for each (its log says so), and
/// the file there is backstop's, the stock one kept beside it.
fn assert_backstop_tm_ran(o: &RealOned, vm: u64, action: &str) {
    let log = o.vm_log(vm);
    assert!(
        log.contains(&format!(
            "Successfully execute transfer manager driver operation: {action}."
        )),
        "{log}"
    );
    assert!(
        o.tm_action_is_backstops(action),
        "tm/local/{action} is not backstop's"
    );
}

/// With backstop's TM (`--with-tm`), a RUNNING VM deployed by OpenNebula's own kvm driver (TCG
/// under a private libvirtd): `onevm backup` makes oned run backstop's prebackup_live, the
/// datastore's backup and postbackup_live; the FULL and two CBT increments, each after guest
/// writes through the VM's virtio disk, dump byte-exact with plain restic (the expected content
/// is computed from the writes, a running image is not read from outside); the VM runs on
/// after each backup and the increments' sizes are what the guest wrote.
#[test]
fn real_oned_backs_up_a_running_vm_through_the_kvm_driver() {
    if reference().is_none() {
        return;
    }
    let lv = crate::live::Libvirt::start();
    let Some(o) = RealOned::start_on(true, Host::Kvm(&lv.uri)) else {
        return;
    };
    let ds = o.datastore("backstop-local");
    let image = o.images.path().join("r.qcow2");
    make_image(&image);
    let mut expected = vec![0u8; 64 << 20];
    expected[..8 << 20].fill(0x5a);
    expected[40 << 20..44 << 20].fill(0x33);
    // Every domain this libvirtd runs is destroyed when the test ends, however it ends (qemu
    // outlives libvirtd); made before oned deploys one.
    let _domains = Domains { uri: &lv.uri };
    let vm = o.running_vm("r", &image);
    let dom = format!("one-{vm}");
    // The guest's disk as qemu sees it: the device its block backend is attached to.
    let info = lv.virsh_ok(&["qemu-monitor-command", &dom, "--hmp", "info block"]);
    let device = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("Attached to:"))
        .map(|d| d.trim().to_string())
        .unwrap_or_else(|| panic!("no disk in {info}"));
    let repo = o.base_path(&ds).join(vm.to_string());
    let writes = [(0x61u8, 20u64 << 20, 2u64 << 20), (0x62, 3 << 20, 1 << 20)];
    for k in 0..3u64 {
        if k > 0 {
            let (pattern, offset, len) = writes[k as usize - 1];
            let cmd = format!("qemu-io -d {device} \"write -P {pattern:#x} {offset} {len}\"");
            let out = lv.virsh_ok(&["qemu-monitor-command", &dom, "--hmp", &cmd]);
            let lower = out.to_lowercase();
            assert!(
                !lower.contains("error") && !lower.contains("fail"),
                "{cmd}: {out}"
            );
            expected[offset as usize..(offset + len) as usize].fill(pattern);
        }
        let id = vm.to_string();
        o.backup_in(vm, &ds, k, &[], ("3", "3"));
        let bimg = first(&values(&o.xml("onevm", &id), "BACKUP_IDS")[0], "ID");
        let incs = increments(&o.xml("oneimage", &bimg));
        assert_eq!(incs.len(), k as usize + 1, "{incs:?}");
        if k > 0 {
            assert!(
                incs[k as usize].3 <= 3,
                "increment {k} read more than the guest wrote: {incs:?}"
            );
        }
        let want = o.images.path().join(format!("running-{k}.raw"));
        fs::write(&want, &expected).expect("expected image");
        assert_restic_dump(&repo, &incs[k as usize].2, &want);
    }
    let running = lv.virsh_ok(&["domstate", &dom]);
    assert_eq!(running.trim(), "running", "the VM stopped");
    let log = o.vm_log(vm);
    assert_eq!(
        log.matches("Successfully execute transfer manager driver operation: prebackup_live.")
            .count(),
        3,
        "oned ran the live backup steps three times: {log}"
    );
    assert_backstop_tm_ran(&o, vm, "prebackup_live");
}

/// With backstop's TM, the disks a VM's BACKUP_CONFIG names: DISK_IDS="1" backs up disk 1
/// alone (not the OS disk, not the volatile disk); BACKUP_VOLATILE=YES (after `--reset`) adds
/// the volatile disk to the two image disks. Then a disk snapshot (`onevm disk-snapshot-create`,
/// which makes the disk an overlay on a frozen file; oned allows it only in FULL mode): the next
/// backup still dumps byte-exact.
#[test]
fn real_oned_backs_up_the_disks_the_backup_config_names_and_a_disk_with_snapshots() {
    let Some(o) = RealOned::start(true) else {
        return;
    };
    let ds = o.datastore("backstop-local");
    let os = o.images.path().join("os.qcow2");
    make_image(&os);
    let data = o.images.path().join("data.qcow2");
    support_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            data.to_str().expect("utf-8"),
            "32M",
        ],
    );
    write_pattern(&data, 0x44, 4 << 20, 4 << 20);
    let vm = o.vm_from(
        "d",
        &[("d-os", &os), ("d-data", &data)],
        "DISK = [ IMAGE = \"d-os\" ]\nDISK = [ IMAGE = \"d-data\" ]\n\
         DISK = [ TYPE = \"fs\", SIZE = \"16\", FORMAT = \"qcow2\" ]\n\
         BACKUP_CONFIG = [ MODE = \"INCREMENT\", DISK_IDS = \"1\" ]\n",
    );
    let id = vm.to_string();
    o.cli_ok("onevm", &["poweroff", "--hard", &id]);
    o.wait_poweroff(vm);
    // Something on the volatile disk, so that leaving it out is seen.
    write_pattern(&o.vm_disk_n(vm, 2), 0x66, 1 << 20, 1 << 20);
    let repo = o.base_path(&ds).join(&id);
    let raw = |disk: u32, name: &str| {
        let to = o.images.path().join(name);
        let file = fs::canonicalize(o.vm_disk_n(vm, disk)).expect("the disk's file");
        raw_copy(&file, &to);
        to
    };

    let want1 = raw(1, "d1-0.raw");
    o.backup(vm, &ds, 0, &[]);
    let snaps = snapshots(&repo);
    assert_eq!(snaps.len(), 1);
    let names: Vec<String> = snapshot_disks(&repo, &snaps[0])
        .iter()
        .filter_map(|p| p.rsplit('/').next().map(str::to_string))
        .collect();
    assert_eq!(names, ["disk.1.0"], "DISK_IDS=1 backs up disk 1 alone");
    assert_restic_dump_disk(&repo, &snaps[0], 1, &want1);

    // BACKUP_VOLATILE=YES, every disk: a new chain.
    let bc = o.template(
        "bc.tmpl",
        "BACKUP_CONFIG = [ MODE = \"INCREMENT\", BACKUP_VOLATILE = \"YES\" ]\n",
    );
    o.cli_ok("onevm", &["updateconf", &id, &bc]);
    let wants: Vec<PathBuf> = (0..3).map(|d| raw(d, &format!("d{d}-v.raw"))).collect();
    o.backup(vm, &ds, 0, &["--reset"]);
    let snaps = snapshots(&repo);
    assert_eq!(snaps.len(), 2);
    let mut names: Vec<String> = snapshot_disks(&repo, &snaps[1])
        .iter()
        .filter_map(|p| p.rsplit('/').next().map(str::to_string))
        .collect();
    names.sort();
    assert_eq!(names, ["disk.0.0", "disk.1.0", "disk.2.0"]);
    for (d, want) in wants.iter().enumerate() {
        assert_restic_dump_disk(&repo, &snaps[1], d as u32, want);
    }

    // A disk snapshot (oned allows them only without incremental backups: MODE=FULL), a write
    // on top of it, then a backup: the disk is now an overlay on the frozen file.
    let bc = o.template(
        "bc.tmpl",
        "BACKUP_CONFIG = [ MODE = \"FULL\", BACKUP_VOLATILE = \"YES\" ]\n",
    );
    o.cli_ok("onevm", &["updateconf", &id, &bc]);
    o.cli_ok(
        "onevm",
        &["disk-snapshot-create", &id, "0", "before-upgrade"],
    );
    o.wait("the disk snapshot", 120, Some(vm), || {
        let xml = o.xml("onevm", &id);
        first(&xml, "STATE") == "8"
            && first(&xml, "LCM_STATE") == "0"
            && xml.contains("before-upgrade")
    });
    // qemu resolves the overlay's relative backing name ("0") next to the path it is given:
    // the test writes through the real file, not the disk.0 link.
    let top = fs::canonicalize(o.vm_disk(vm)).expect("disk.0's file");
    write_pattern(&top, 0x3d, 24 << 20, 2 << 20);
    let want0 = raw(0, "d0-snap.raw");
    let done = o.backups_done(vm);
    o.cli_ok("onevm", &["backup", &id, "-d", &ds]);
    o.wait(
        "the FULL backup of the disk with a snapshot",
        180,
        Some(vm),
        || o.backups_done(vm) > done && o.vm_state(vm) == ("8".into(), "0".into()),
    );
    let snaps = snapshots(&repo);
    assert_eq!(snaps.len(), 3);
    assert_restic_dump_disk(&repo, &snaps[2], 0, &want0);
    assert_restic_dump_disk(&repo, &snaps[2], 1, &wants[1]);
    assert_backstop_tm_ran(&o, vm, "prebackup");
}

/// INCREMENT_MODE=SNAPSHOT through a real oned, one chain taken in turns by OpenNebula's stock
/// TM and backstop's: the stock prebackup makes the FULL and increment 1 (its rotating overlay
/// `disk.0.snap/<n+1>`); then backstop is installed `--with-tm` and takes increments 2 and 3
/// from the overlay the stock script left, reading only its clusters (the increments' sizes in
/// oned's record are what was written); then an upgrade puts the stock scripts back and the
/// stock TM takes increment 4 from backstop's layout. Every point dumps byte-exact with plain
/// restic.
#[test]
fn real_oned_snapshot_mode_switches_between_the_stock_tm_and_backstops() {
    let Some(o) = RealOned::start(false) else {
        return;
    };
    let ds = o.datastore("backstop-local");
    let image = o.images.path().join("s.qcow2");
    make_image(&image);
    let vm = o.vm_from(
        "s",
        &[("s", &image)],
        "DISK = [ IMAGE = \"s\" ]\nBACKUP_CONFIG = [ MODE = \"INCREMENT\", INCREMENT_MODE = \"SNAPSHOT\" ]\n",
    );
    o.cli_ok("onevm", &["poweroff", "--hard", &vm.to_string()]);
    o.wait_poweroff(vm);
    let disk = o.vm_disk(vm);
    let vm_dir = disk.parent().expect("vm dir").to_path_buf();
    let repo = o.base_path(&ds).join(vm.to_string());
    let expected = |k: u64| o.images.path().join(format!("expected-{k}.raw"));
    let link_of = || {
        fs::read_link(&disk)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|e| panic!("disk.0 is not a link: {e}"))
    };
    let mut sizes = Vec::new();
    let mut point = |k: u64, backstops: bool| {
        if k > 0 {
            write_pattern(&disk, 0x40 + k as u8, (8 + 4 * k) << 20, 2 << 20);
        }
        raw_copy(&disk, &expected(k));
        assert_eq!(
            o.tm_action_is_backstops("prebackup"),
            backstops,
            "increment {k}: whose prebackup runs"
        );
        o.backup(vm, &ds, k, &[]);
        // Whoever took it, the disk runs on the next overlay of the stock layout.
        assert!(
            link_of().ends_with(&format!("disk.0.snap/{}", k + 1)),
            "after increment {k}: disk.0 -> {}",
            link_of()
        );
        let vm_xml = o.xml("onevm", &vm.to_string());
        let bimg = first(&values(&vm_xml, "BACKUP_IDS")[0], "ID");
        let incs = increments(&o.xml("oneimage", &bimg));
        sizes.push(incs.last().expect("an increment").3);
        let snaps = snapshots(&repo);
        assert_restic_dump(&repo, snaps.last().expect("a snapshot"), &expected(k));
    };
    point(0, false);
    point(1, false);
    o.script(
        "add-backstop.sh",
        &[
            ("WITH_TM", "1"),
            ("BACKSTOP_SRC", &support::repo_root().display().to_string()),
            ("BACKSTOP_BIN", BACKSTOP),
            ("RESTIC_PASSWORD", PASSWORD),
        ],
    );
    point(2, true);
    point(3, true);
    let log = o.vm_log(vm);
    assert!(
        !log.contains("reads the whole disk"),
        "backstop read a whole disk: {log}"
    );
    // An upgrade overwrites backstop's TM actions with the stock ones.
    let tm = o.one().join("var/remotes/tm/local");
    for action in ["prebackup", "postbackup"] {
        fs::copy(tm.join(format!("{action}.backstop-stock")), tm.join(action))
            .expect("the stock script back");
    }
    point(4, false);
    eprintln!(
        "SNAPSHOT mode through oned: backup sizes {sizes:?} MiB (FULL and 1 by the stock TM, 2 and 3 by backstop, 4 by the stock TM)"
    );
    // 2 MiB written between points: increments of a few MiB, the FULL more than 12.
    assert!(sizes[0] >= 12, "{sizes:?}");
    for (k, s) in sizes.iter().enumerate().skip(1) {
        assert!(*s <= 4, "increment {k} is {s} MiB: {sizes:?}");
    }
    assert!(vm_dir.join("disk.0.snap/0").is_file());
    restic(&repo, &["check", "--read-data"]);
}
