//! OpenNebula users, as a dashboard asks oned about them (docs/web.md, "Tenants"): oned
//! checks a user's password by making a login token (`one.user.login`, whatever its auth
//! driver: core, LDAP ...), the token lists the VMs the user may see (`one.vmpool.info`:
//! ownership, group and ACLs, deleted VMs excepted), and a logout revokes it. Only oned's
//! endpoint is needed, found as OpenNebula's tools find it (`ONE_XMLRPC`,
//! `~/.one/one_endpoint`): no credentials of the caller's own.

use backstop_protocol::oned::OnedClient;
use backstop_protocol::xmlrpc::{OnedReply, Value};
use std::collections::BTreeSet;

/// oned's error code for credentials it did not accept.
const AUTHENTICATION: i64 = 0x0100;

/// The longest user name a login reads (oned's own limit is 128 characters).
const MAX_USER_BYTES: usize = 128;

/// Why oned did not give what was asked.
#[derive(Debug)]
pub enum Refused {
    /// The user name, password or token is not (or no longer) accepted: a failed login, or a
    /// session that ends.
    Credentials,
    /// oned could not be reached (or its answer not read): the one line why.
    Unreachable(String),
    /// oned refused otherwise (login tokens disabled for the user's driver, a fault ...): the
    /// one line why.
    Other(String),
}

impl Refused {
    /// The one line why, for the server's log.
    pub fn reason(&self) -> &str {
        match self {
            Refused::Credentials => "oned did not accept the user name and password (or token)",
            Refused::Unreachable(e) | Refused::Other(e) => e,
        }
    }
}

/// Whether `text` can travel in an XML-RPC request: XML 1.0 has no other control characters
/// than tab, line feed and carriage return.
pub fn xml_safe(text: &str) -> bool {
    !text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

/// oned's endpoint, for its users' logins.
#[derive(Debug)]
pub struct Users {
    oned: OnedClient,
}

/// Whether `user` can be an OpenNebula user name: not empty, at most [`MAX_USER_BYTES`], no
/// `:` (it ends the name in a session string), no whitespace or control characters.
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= MAX_USER_BYTES
        && !user
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control())
}

impl Users {
    /// oned's endpoint as OpenNebula's tools find it; the one line why not.
    pub fn from_env() -> Result<Users, String> {
        let oned = OnedClient::from_env_endpoint().map_err(|e| e.to_string())?;
        Ok(Users { oned })
    }

    /// The endpoint as it may be printed.
    pub fn endpoint(&self) -> &str {
        self.oned.endpoint()
    }

    /// Has oned check `user`'s `password` and make a login token valid `seconds`; the token.
    pub fn login(&self, user: &str, password: &str, seconds: i64) -> Result<String, Refused> {
        if !valid_user(user) || !xml_safe(password) {
            return Err(Refused::Credentials);
        }
        let reply = self.oned.reply_as(
            &format!("{user}:{password}"),
            "one.user.login",
            &[
                Value::Str(user.to_string()),
                Value::Str(String::new()),
                Value::Int(seconds),
                Value::Int(-1),
            ],
        );
        match answer("one.user.login", reply)? {
            Value::Str(token) if !token.is_empty() && !token.contains(':') => Ok(token),
            other => Err(Refused::Other(format!(
                "oned answered one.user.login with {}, not a login token",
                kind(&other)
            ))),
        }
    }

    /// The ids of the VMs oned lets `user` (logged in with `token`) see, deleted ones aside.
    pub fn vms(&self, user: &str, token: &str) -> Result<BTreeSet<u64>, Refused> {
        let session = format!("{user}:{token}");
        // A page of VMs is read with the token; oned's refusal of it says whether the token
        // still holds. The pages after it go through the runner's pool reader.
        let first = self.oned.reply_as(
            &session,
            "one.user.info",
            &[Value::Int(-1), Value::Bool(false)],
        );
        answer("one.user.info", first)?;
        let client = self.oned.with_session(session);
        let pool = super::inventory::read_pool(&client, 500)
            .map_err(|e| Refused::Unreachable(e.to_string()))?;
        Ok(pool.into_iter().map(|v| v.id).collect())
    }

    /// Revokes `token` (a logout); what goes wrong is only said on stderr, as the session is
    /// gone either way and the token expires by itself.
    pub fn revoke(&self, user: &str, token: &str) {
        let reply = self.oned.reply_as(
            &format!("{user}:{token}"),
            "one.user.login",
            &[
                Value::Str(user.to_string()),
                Value::Str(token.to_string()),
                Value::Int(0),
                Value::Int(-1),
            ],
        );
        if let Err(e @ (Refused::Unreachable(_) | Refused::Other(_))) =
            answer("one.user.login", reply)
        {
            eprintln!(
                "backstop serve: the login token of {user} was not revoked: {}",
                e.reason()
            );
        }
    }
}

/// oned's result, or why not.
fn answer(
    method: &str,
    reply: Result<OnedReply, backstop_protocol::Error>,
) -> Result<Value, Refused> {
    match reply {
        Ok(OnedReply::Ok(v)) => Ok(v),
        Ok(OnedReply::Failed { code, .. }) if code == AUTHENTICATION => Err(Refused::Credentials),
        Ok(OnedReply::Failed { message, code }) => Err(Refused::Other(
            backstop_protocol::oned::refused(method, &message, code).to_string(),
        )),
        Err(e) => Err(Refused::Unreachable(e.to_string())),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Int(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Double(_) => "a number",
        Value::Str(_) => "an empty or malformed string",
        Value::Array(_) => "an array",
        Value::Struct(_) => "a struct",
        Value::Nil => "nothing",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_a_session_string_can_carry() {
        for (user, ok) in [
            ("alice", true),
            ("ldap.user@example", true),
            ("", false),
            ("a:b", false),
            ("a b", false),
            ("a\nb", false),
            ("a\u{0}", false),
        ] {
            assert_eq!(valid_user(user), ok, "{user:?}");
        }
        assert!(valid_user(&"x".repeat(128)) && !valid_user(&"x".repeat(129)));
        assert!(xml_safe("pass word\twith tab") && !xml_safe("a\u{1}b") && !xml_safe("\u{7f}"));
    }
}
