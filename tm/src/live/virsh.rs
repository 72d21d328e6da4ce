//! libvirt as the KVM driver uses it on a host (`virsh`, with `LIBVIRT_URI` from OpenNebula's
//! kvmrc), and the domain XML pieces a live backup writes: checkpoints, pull-mode backups,
//! `--diskspec` lists. The guest is frozen (FS_FREEZE) around what must be consistent.

use super::*;

/// `virsh` against the hypervisor's libvirt: `LIBVIRT_URI` from the environment or from
/// OpenNebula's `etc/vmm/kvm/kvmrc` in the synced remotes tree, else virsh's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Virsh {
    pub uri: Option<String>,
}

impl Virsh {
    /// The URI as the KVM driver on this host uses it.
    pub fn for_host() -> Virsh {
        if let Some(uri) = std::env::var("LIBVIRT_URI").ok().filter(|u| !u.is_empty()) {
            return Virsh { uri: Some(uri) };
        }
        // <remotes>/backstop/bin/backstop -> <remotes>/etc/vmm/kvm/kvmrc
        let kvmrc = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("etc/vmm/kvm/kvmrc")));
        let uri = kvmrc
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| {
                backstop_protocol::config::parse_conf(&text)
                    .into_iter()
                    .rev()
                    .find(|(k, _)| k == "LIBVIRT_URI")
                    .map(|(_, v)| v)
            })
            .filter(|u| !u.is_empty());
        Virsh { uri }
    }

    /// Runs `virsh <args>`; its stdout, or an error naming the command and virsh's message.
    pub fn run(&self, args: &[&str]) -> Result<String, Error> {
        let mut cmd = Command::new("virsh");
        if let Some(u) = &self.uri {
            cmd.arg("--connect").arg(u);
        }
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io("cannot run virsh", e))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let message = err
            .lines()
            .map(|l| l.trim().trim_start_matches("error: ").trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(": ");
        Err(Error::new(
            ErrorKind::Input,
            format!(
                "virsh {}: {}",
                args.first().copied().unwrap_or_default(),
                if message.is_empty() {
                    format!("exited with {}", out.status)
                } else {
                    message
                }
            ),
        ))
    }

    /// The domain's checkpoints, by name.
    pub(super) fn checkpoints(&self, dom: &str) -> Result<Vec<String>, Error> {
        Ok(self
            .run(&["checkpoint-list", dom, "--name"])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// (target, source) of every disk and cdrom of the domain.
    pub(super) fn disks(&self, dom: &str) -> Result<Vec<(String, String)>, Error> {
        let text = self.run(&["domblklist", dom, "--details"])?;
        Ok(text
            .lines()
            .skip(2)
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                match w.as_slice() {
                    [_, device, target, source @ ..] if matches!(*device, "disk" | "cdrom") => {
                        Some((target.to_string(), source.join(" ")))
                    }
                    _ => None,
                }
            })
            .collect())
    }

    /// The layers of disk `target`, the active one first: (libvirt's index, which names the
    /// layer as `<target>[<index>]` whatever path it was opened by; its path), from
    /// `domstats --block --backing`.
    pub(super) fn layers(
        &self,
        dom: &str,
        target: &str,
    ) -> Result<Vec<(Option<u32>, String)>, Error> {
        let text = self.run(&["domstats", "--block", "--backing", dom])?;
        let mut layers: std::collections::BTreeMap<u32, (String, String, Option<u32>)> =
            std::collections::BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.trim().strip_prefix("block.") else {
                continue;
            };
            let Some((n, kv)) = rest.split_once('.') else {
                continue;
            };
            let (Ok(n), Some((key, value))) = (n.parse::<u32>(), kv.split_once('=')) else {
                continue;
            };
            let entry = layers.entry(n).or_default();
            match key {
                "name" => entry.0 = value.to_string(),
                "path" => entry.1 = value.to_string(),
                "backingIndex" => entry.2 = value.parse().ok(),
                _ => {}
            }
        }
        // libvirt lists a disk's layers top first.
        Ok(layers
            .into_values()
            .filter(|(name, _, _)| name == target)
            .map(|(_, path, index)| (index, path))
            .collect())
    }

    /// Whether a block job (a pull-mode backup) runs on the domain.
    pub(super) fn backup_job_active(&self, dom: &str) -> bool {
        self.run(&["domjobinfo", dom]).is_ok_and(|t| {
            t.lines()
                .any(|l| l.starts_with("Operation:") && l.contains("Backup"))
        })
    }
}

/// The guest frozen (FS_FREEZE) while `f` runs; thawed on every path.
pub(super) fn frozen<T>(
    virsh: &Virsh,
    dom: &str,
    mode: FsFreeze,
    f: impl FnOnce() -> Result<T, Error>,
) -> Result<T, Error> {
    let (freeze, thaw) = match mode {
        FsFreeze::None => return f(),
        FsFreeze::Agent => ("domfsfreeze", "domfsthaw"),
        FsFreeze::Suspend => ("suspend", "resume"),
    };
    virsh
        .run(&[freeze, dom])
        .map_err(|e| fail(format!("FS_FREEZE: cannot freeze {dom}: {e}")))?;
    let result = f();
    if let Err(e) = virsh.run(&[thaw, dom]) {
        log(Level::Error, &format!("FS_FREEZE: cannot thaw {dom}: {e}"));
    }
    result
}

/// Deletes a checkpoint with its bitmaps; only its metadata when the bitmaps are gone already.
pub(super) fn delete_checkpoint(virsh: &Virsh, dom: &str, name: &str) -> Result<(), Error> {
    match virsh.run(&["checkpoint-delete", dom, name]) {
        Ok(_) => Ok(()),
        Err(e) => virsh
            .run(&["checkpoint-delete", dom, name, "--metadata"])
            .map(|_| ())
            .map_err(|_| e),
    }
}

pub(super) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// `--diskspec` arguments: ours with `ours`, every other disk with `others`.
pub(super) fn diskspecs(
    all: &[(String, String)],
    disks: &[LiveDisk],
    ours: impl Fn(&LiveDisk) -> String,
    others: &str,
) -> Vec<String> {
    let mut specs = Vec::new();
    for (target, _) in all {
        specs.push("--diskspec".to_string());
        match disks.iter().find(|d| &d.target == target) {
            Some(d) => specs.push(ours(d)),
            None => specs.push(format!("{target},{others}")),
        }
    }
    specs
}

/// `<disk .../>` elements of a checkpoint or backup XML.
pub(super) fn disk_elements(
    all: &[(String, String)],
    disks: &[LiveDisk],
    ours: impl Fn(&LiveDisk) -> String,
    others: impl Fn(&str) -> String,
) -> String {
    all.iter()
        .map(
            |(target, _)| match disks.iter().find(|d| &d.target == target) {
                Some(d) => ours(d),
                None => others(target),
            },
        )
        .collect()
}
