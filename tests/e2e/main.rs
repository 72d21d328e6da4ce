//! End-to-end tests: `install.sh` into a temporary remotes tree, then the installed actions
//! called as oned calls them (argv, stdin, exit code, stdout, stderr). One test binary.

mod actions;
mod bad_input;
mod browser;
mod ceph;
mod ceph_live;
mod ceph_stock;
mod cloud;
mod crash;
mod discover;
mod escrow;
mod guide;
mod heal;
mod install;
mod jobs;
mod live;
mod notify;
mod object_lock;
mod oned_mock;
mod oned_mode;
mod oned_real;
mod pull;
mod rekey;
mod remotes;
mod repo_cli;
mod retention;
mod security;
mod snapshot_mode;
mod stock;
mod support;
mod sync_crash;
mod sync_filters;
mod sync_jobs;
mod tm;
mod web;

use backstop_testkit::ceph as cephcluster;
use backstop_testkit::s3 as s3server;
