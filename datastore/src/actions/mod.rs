//! One module per action, named as OpenNebula names it.

pub mod backup;
pub mod backup_cancel;
pub mod downloader;
pub mod increment_flatten;
pub mod ls;
pub mod monitor;
pub mod restore;
pub mod rm;
pub mod stat;
