//! The S3 rows' server: the tests' own SeaweedFS (`weed mini` on loopback, ports of its own,
//! stopped by PID; backstop-testkit), when `weed` is on PATH. Its key pair
//! reaches every tool through the environment, never argv.

pub use backstop_testkit::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use std::path::Path;

/// A server under `work`, or None when SeaweedFS is not installed.
pub fn start(work: &Path) -> Option<S3Server> {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("weed").is_file()));
    found.then(|| S3Server::start(work))
}
