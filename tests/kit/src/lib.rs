//! # backstop-testkit
//!
//! The real servers the tests (and the benchmark) run against, each started on loopback in a
//! directory of the caller's and stopped by its PID when dropped: OpenSSH's sshd ([`sshd`]), the
//! S3 server and a fault-injecting proxy in front of it ([`s3`]), and a single-node Ceph
//! cluster ([`ceph`]), and the real restic binary on a local repository ([`restic`]). Nothing
//! here is a mock.

pub mod ceph;
pub mod restic;
pub mod s3;
pub mod sshd;
