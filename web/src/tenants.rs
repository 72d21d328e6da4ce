//! OpenNebula users on the dashboard (docs/web.md, "Tenants").
//!
//! With `BACKSTOP_WEB_TENANTS=yes`, the login form takes an OpenNebula user name. oned checks
//! the password by making a login token ([`backstop_backupjob::oned::users`]); the password is
//! then forgotten, and the token is what the dashboard asks oned with. The VMs the user may
//! see are asked again at most every [`RECHECK_SECONDS`], so a VM taken away, a disabled user
//! or a revoked token shows within that time. Logging out revokes the token.

pub use backstop_backupjob::oned::users::{Refused, valid_user, xml_safe};

/// How long a tenant's list of VMs is trusted before oned is asked again.
pub const RECHECK_SECONDS: i64 = 60;

/// oned, for its users' logins.
pub type Tenants = backstop_backupjob::oned::users::Users;

/// oned's endpoint for tenants' logins, as OpenNebula's tools find it.
pub fn from_env() -> Result<Tenants, crate::Error> {
    Tenants::from_env().map_err(|e| crate::Error::Config(format!("BACKSTOP_WEB_TENANTS=yes: {e}")))
}
