//! One module per action, named as OpenNebula names it.

pub mod backup;
pub mod monitor;
