//! The argument vectors oned passes to each action (driver contract §2.2, §3.2, §3.5, §5.8, §9.2, §13).

use serde::Serialize;

/// A malformed argument vector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgsError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ArgsError> {
    Err(ArgsError(msg.into()))
}

fn number<T: std::str::FromStr>(what: &str, value: &str) -> Result<T, ArgsError> {
    value
        .parse()
        .map_err(|_| ArgsError(format!("{what} is not a number: {value:?}")))
}

/// Where the input of a one_datastore action comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum DataSource {
    /// OpenNebula ≥ 6.8 (and 6.6.2+ with `--stdin`): base64 on stdin.
    Stdin,
    /// OpenNebula 6.6.0/6.6.1: `<action> <base64> <id>`.
    Argument(String),
}

/// The argv of monitor, rm, stat, restore, increment_flatten (and the unsupported actions):
/// `<id>` (≥ 6.8), or `<base64> <id>` (6.6). `id` is the image id, datastore id or request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatastoreArgs {
    pub id: i64,
    pub data: DataSource,
}

impl DatastoreArgs {
    pub fn parse(args: &[String]) -> Result<Self, ArgsError> {
        match args {
            [id] => Ok(DatastoreArgs {
                id: number("the request id", id)?,
                data: DataSource::Stdin,
            }),
            // 6.6.2/6.6.3 may mark the stdin mode explicitly (UNCONFIRMED form); accept both orders.
            [flag, id] | [id, flag] if flag == "--stdin" || flag == "-" => Ok(DatastoreArgs {
                id: number("the request id", id)?,
                data: DataSource::Stdin,
            }),
            [data, id] => Ok(DatastoreArgs {
                id: number("the request id", id)?,
                data: DataSource::Argument(data.clone()),
            }),
            _ => err(format!(
                "expected 1 argument (the id; data on stdin), got {}",
                args.len()
            )),
        }
    }
}

/// `host:vm_dir` as oned writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostDir {
    pub host: String,
    pub vm_dir: String,
}

impl HostDir {
    pub fn parse(value: &str) -> Result<Self, ArgsError> {
        match value.split_once(':') {
            Some((host, dir)) if !host.is_empty() && dir.starts_with('/') => Ok(HostDir {
                host: host.to_string(),
                vm_dir: dir.to_string(),
            }),
            _ => err(format!(
                "expected <host>:<absolute VM directory>, got {value:?}"
            )),
        }
    }

    /// The VM directory's last component, which is the VM id for every system datastore.
    pub fn vm_dir_name(&self) -> &str {
        self.vm_dir
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
    }
}

/// The six arguments of backup, prebackup[_live] and postbackup[_live]:
/// `host:vm_dir disk_ids deploy_id bj_id|- vm_id sys_ds_id` (≥ 6.8), or without `bj_id` (6.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupArgs {
    pub host_dir: HostDir,
    pub disk_ids: Vec<u32>,
    pub deploy_id: String,
    pub job_id: Option<u64>,
    pub vm_id: u64,
    pub system_ds_id: u64,
}

impl BackupArgs {
    pub fn parse(args: &[String]) -> Result<Self, ArgsError> {
        let (hd, disks, deploy, job, vm, ds) = match args {
            [hd, disks, deploy, job, vm, ds] => (hd, disks, deploy, Some(job), vm, ds),
            [hd, disks, deploy, vm, ds] => (hd, disks, deploy, None, vm, ds),
            _ => {
                return err(format!(
                    "expected 6 arguments (host:vm_dir disk_ids deploy_id job_id vm_id system_ds_id), got {}",
                    args.len()
                ));
            }
        };
        let disk_ids = disks
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| number("a disk id", d))
            .collect::<Result<Vec<u32>, _>>()?;
        if disk_ids.is_empty() {
            return err("the disk id list is empty");
        }
        if deploy.is_empty() {
            return err("the deploy id is empty");
        }
        let job_id = match job.map(String::as_str) {
            None | Some("-") | Some("") | Some("-1") => None,
            Some(j) => Some(number("the backup job id", j)?),
        };
        Ok(BackupArgs {
            host_dir: HostDir::parse(hd)?,
            disk_ids,
            deploy_id: deploy.clone(),
            job_id,
            vm_id: number("the VM id", vm)?,
            system_ds_id: number("the system datastore id", ds)?,
        })
    }

    /// The six arguments again, as a host step is given them ([`BackupArgs::parse`] reads
    /// them back).
    pub fn to_argv(&self) -> Vec<String> {
        vec![
            format!("{}:{}", self.host_dir.host, self.host_dir.vm_dir),
            self.disk_ids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(":"),
            self.deploy_id.clone(),
            self.job_id.map_or("-".into(), |j| j.to_string()),
            self.vm_id.to_string(),
            self.system_ds_id.to_string(),
        ]
    }
}

/// `backup_cancel host:vm_dir deploy_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CancelArgs {
    pub host_dir: HostDir,
    pub deploy_id: String,
}

impl CancelArgs {
    pub fn parse(args: &[String]) -> Result<Self, ArgsError> {
        match args {
            [hd, deploy] if !deploy.is_empty() => Ok(CancelArgs {
                host_dir: HostDir::parse(hd)?,
                deploy_id: deploy.clone(),
            }),
            _ => err(format!(
                "expected 2 arguments (host:vm_dir deploy_id), got {}",
                args.len()
            )),
        }
    }
}

/// `ls -i <increment id|-1>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LsArgs {
    /// `None` for -1: the whole chain.
    pub increment: Option<u64>,
}

impl LsArgs {
    pub fn parse(args: &[String]) -> Result<Self, ArgsError> {
        match args {
            [flag, inc] if flag == "-i" => {
                let n: i64 = number("the increment id", inc)?;
                Ok(LsArgs {
                    increment: u64::try_from(n).ok(),
                })
            }
            [] => Ok(LsArgs { increment: None }),
            _ => err("expected -i <increment id|-1>"),
        }
    }
}

/// TM `restore host:vm_dir vm_id img_id inc_id disk_id` (driver contract §9.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TmRestoreArgs {
    pub host_dir: HostDir,
    pub vm_id: u64,
    pub image_id: u64,
    pub increment: Option<u64>,
    pub disk_id: Option<u32>,
}

impl TmRestoreArgs {
    pub fn parse(args: &[String]) -> Result<Self, ArgsError> {
        match args {
            [hd, vm, img, inc, disk] => Ok(TmRestoreArgs {
                host_dir: HostDir::parse(hd)?,
                vm_id: number("the VM id", vm)?,
                image_id: number("the image id", img)?,
                increment: u64::try_from(number::<i64>("the increment id", inc)?).ok(),
                disk_id: u32::try_from(number::<i64>("the disk id", disk)?).ok(),
            }),
            _ => err(format!(
                "expected 5 arguments (host:vm_dir vm_id image_id increment_id disk_id), got {}",
                args.len()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_backup_args_of_every_version() {
        let a = BackupArgs::parse(&v(&[
            "node1:/var/lib/one//datastores/0/22",
            "0:2:",
            "one-22",
            "-",
            "22",
            "0",
        ]))
        .expect("6.8+");
        assert_eq!(a.host_dir.host, "node1");
        assert_eq!(a.host_dir.vm_dir, "/var/lib/one//datastores/0/22");
        assert_eq!(a.host_dir.vm_dir_name(), "22");
        assert_eq!(a.disk_ids, vec![0, 2]);
        assert_eq!(a.job_id, None);
        let b = BackupArgs::parse(&v(&["h:/d/7", "0", "uuid", "7", "0"])).expect("6.6");
        assert_eq!((b.vm_id, b.job_id), (7, None));
        let c = BackupArgs::parse(&v(&["h:/d/7", "1", "uuid", "3", "7", "0"])).expect("job");
        assert_eq!(c.job_id, Some(3));
    }

    #[test]
    fn pins_the_errors() {
        assert_eq!(
            BackupArgs::parse(&v(&["h:/d", "x", "d", "-", "1", "0"]))
                .expect_err("bad disk")
                .to_string(),
            "a disk id is not a number: \"x\""
        );
        assert_eq!(
            BackupArgs::parse(&v(&["h/d", "0", "d", "-", "1", "0"]))
                .expect_err("bad dir")
                .to_string(),
            "expected <host>:<absolute VM directory>, got \"h/d\""
        );
        assert_eq!(
            DatastoreArgs::parse(&v(&["abc"]))
                .expect_err("bad id")
                .to_string(),
            "the request id is not a number: \"abc\""
        );
        assert_eq!(
            DatastoreArgs::parse(&[]).expect_err("none").to_string(),
            "expected 1 argument (the id; data on stdin), got 0"
        );
    }

    #[test]
    fn reads_the_66_argv_form() {
        let a = DatastoreArgs::parse(&v(&["PEEvPg==", "12"])).expect("6.6");
        assert_eq!(a.id, 12);
        assert_eq!(a.data, DataSource::Argument("PEEvPg==".into()));
    }
}
