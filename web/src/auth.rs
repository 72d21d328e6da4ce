//! Who may see what (docs/web.md).
//!
//! With no credentials set, `serve` listens on loopback addresses only and everyone who can
//! reach it sees everything (it is read-only). Any other address needs both:
//! - `BACKSTOP_API_TOKEN`: `Authorization: Bearer <token>` for the JSON API and `/metrics`;
//! - `BACKSTOP_WEB_PASSWORD_HASH`: an argon2 hash (PHC string, as `backstop serve
//!   --hash-password` prints it) of the password of the pages; a login sets a session cookie
//!   (HttpOnly, SameSite=Strict, random, kept in memory: a restart logs everyone out).
//!
//! Every form carries a CSRF token tied to the session (the login form: to a pre-session
//! cookie); a POST without the right one is refused. Tokens are compared in constant time.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

/// The credentials `serve` runs with.
#[derive(Default)]
pub struct Credentials {
    pub api_token: Option<String>,
    pub password_hash: Option<String>,
    /// `BACKSTOP_ADMIN_TOKEN`: the only key to the actions (POST).
    pub admin_token: Option<String>,
    /// `BACKSTOP_WEB_ACTIONS=yes`: the pages' login may act too (run, retry, cancel, a
    /// retention plan), from the buttons of a job's page; off unless asked for, as it makes
    /// the page password an admin's.
    pub web_actions: bool,
    /// `BACKSTOP_WEB_TENANTS=yes`: OpenNebula users log in with their own credentials,
    /// checked by oned, and see only their VMs ([`crate::tenants`]).
    pub tenants: bool,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("password_hash", &self.password_hash.is_some())
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("web_actions", &self.web_actions)
            .field("tenants", &self.tenants)
            .finish()
    }
}

impl Credentials {
    pub fn from_env() -> Result<Credentials, crate::Error> {
        let get = |k: &str| {
            std::env::var(k)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let creds = Credentials {
            api_token: get("BACKSTOP_API_TOKEN"),
            password_hash: get("BACKSTOP_WEB_PASSWORD_HASH"),
            admin_token: get("BACKSTOP_ADMIN_TOKEN"),
            web_actions: yes_no("BACKSTOP_WEB_ACTIONS", get("BACKSTOP_WEB_ACTIONS"))?,
            tenants: yes_no("BACKSTOP_WEB_TENANTS", get("BACKSTOP_WEB_TENANTS"))?,
        };
        if creds.tenants && creds.password_hash.is_none() {
            return Err(crate::Error::Config(
                "BACKSTOP_WEB_TENANTS=yes needs BACKSTOP_WEB_PASSWORD_HASH too: without a page \
                 password nobody logs in, and every page is open to whoever reaches it"
                    .into(),
            ));
        }
        for (name, t) in [
            ("BACKSTOP_API_TOKEN", &creds.api_token),
            ("BACKSTOP_ADMIN_TOKEN", &creds.admin_token),
        ] {
            if t.as_ref().is_some_and(|t| t.len() < 16) {
                return Err(crate::Error::Config(format!(
                    "{name} is shorter than 16 characters"
                )));
            }
        }
        if creds.admin_token.is_some() && creds.admin_token == creds.api_token {
            return Err(crate::Error::Config(
                "BACKSTOP_ADMIN_TOKEN must differ from BACKSTOP_API_TOKEN".into(),
            ));
        }
        if let Some(h) = &creds.password_hash {
            argon2::PasswordHash::new(h).map_err(|e| {
                crate::Error::Config(format!("BACKSTOP_WEB_PASSWORD_HASH is not an argon2 hash ({e}); make one with backstop serve --hash-password"))
            })?;
        }
        Ok(creds)
    }

    /// Whether anything needs a login.
    pub fn required(&self) -> bool {
        self.api_token.is_some() || self.password_hash.is_some()
    }

    pub fn complete(&self) -> bool {
        self.api_token.is_some() && self.password_hash.is_some()
    }

    pub fn token_ok(&self, given: &str) -> bool {
        self.api_token
            .as_deref()
            .is_some_and(|t| same(t.as_bytes(), given.as_bytes()))
    }

    pub fn admin_ok(&self, given: &str) -> bool {
        self.admin_token
            .as_deref()
            .is_some_and(|t| same(t.as_bytes(), given.as_bytes()))
    }

    pub fn password_ok(&self, given: &str) -> bool {
        use argon2::PasswordVerifier;
        let Some(h) = &self.password_hash else {
            return false;
        };
        argon2::PasswordHash::new(h).is_ok_and(|parsed| {
            argon2::Argon2::default()
                .verify_password(given.as_bytes(), &parsed)
                .is_ok()
        })
    }
}

/// A yes/no setting of the environment; unset is no.
fn yes_no(name: &str, value: Option<String>) -> Result<bool, crate::Error> {
    match value.as_deref() {
        None | Some("no" | "NO" | "0") => Ok(false),
        Some("yes" | "YES" | "1") => Ok(true),
        Some(other) => Err(crate::Error::Config(format!(
            "{name} is {other:?}: yes or no"
        ))),
    }
}

/// An argon2id hash of `password` with a random salt (PHC string).
pub fn hash_password(password: &str) -> Result<String, crate::Error> {
    use argon2::PasswordHasher;
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(crate::Error::Config(format!(
            "the password is longer than {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| crate::Error::Config(format!("no randomness: {e}")))?;
    let salt = argon2::password_hash::SaltString::encode_b64(&salt)
        .map_err(|e| crate::Error::Config(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| crate::Error::Config(e.to_string()))
}

/// Constant-time equality.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn random_token() -> String {
    let mut b = [0u8; 32];
    // Without randomness there can be no session: an empty token matches nothing.
    if getrandom::fill(&mut b).is_err() {
        return String::new();
    }
    hex::encode(b)
}

/// Who a session is.
#[derive(Clone, Debug)]
pub enum Who {
    /// The page password's holder (`BACKSTOP_WEB_PASSWORD_HASH`).
    Admin,
    /// An OpenNebula user, checked by oned ([`crate::tenants`]).
    Tenant(Tenant),
}

/// An OpenNebula user's session: oned's login token (never their password) and the VMs oned
/// said they may use, as of `checked`.
#[derive(Clone)]
pub struct Tenant {
    pub user: String,
    pub token: String,
    pub vms: std::sync::Arc<std::collections::BTreeSet<u64>>,
    pub checked: i64,
    /// A request is asking oned again right now ([`Sessions::claim_recheck`]).
    pub checking: bool,
    /// When asking oned last failed, if it did since the last answer.
    pub failed_at: Option<i64>,
}

impl Tenant {
    /// A tenant's session as oned just answered: their token and VMs.
    pub fn new(
        user: String,
        token: String,
        vms: std::collections::BTreeSet<u64>,
        now: i64,
    ) -> Tenant {
        Tenant {
            user,
            token,
            vms: std::sync::Arc::new(vms),
            checked: now,
            checking: false,
            failed_at: None,
        }
    }
}

/// Whose turn it is to ask oned again for a tenant's VMs.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// This request's: it asks, then says how it went ([`Sessions::recheck_done`]).
    Yours,
    /// Another request of the session is asking: use the list it has.
    Underway,
    /// Asking failed less than [`RECHECK_BACKOFF`] seconds ago: answer without asking.
    BackingOff,
    /// The session is gone.
    Gone,
}

/// How long after a failed recheck a tenant's requests wait before oned is asked again.
pub const RECHECK_BACKOFF: i64 = 10;

/// A user's sessions at most: a new login past it ends (and revokes) their oldest.
pub const MAX_SESSIONS_PER_USER: usize = 10;

/// Failed tenant logins allowed in [`FAILURE_WINDOW`] over every OpenNebula user name: past it,
/// OpenNebula logins wait for the window (each asks oned); the page password's are apart.
pub const MAX_TENANT_FAILURES: usize = 100;

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("user", &self.user)
            .field("token", &"<redacted>")
            .field("vms", &self.vms.len())
            .field("checked", &self.checked)
            .field("checking", &self.checking)
            .field("failed_at", &self.failed_at)
            .finish()
    }
}

struct Live {
    csrf: String,
    until: i64,
    who: Who,
}

/// Sessions and their CSRF tokens, in memory.
#[derive(Default)]
pub struct Sessions {
    /// session id -> the session.
    live: Mutex<HashMap<String, Live>>,
    /// When the recent login attempts that failed or are still being checked began
    /// (seconds), and the user name each gave ("" for the page password), for
    /// [`Sessions::begin_login`].
    attempts: Mutex<Vec<(i64, String)>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions")
    }
}

pub const SESSION_SECONDS: i64 = 8 * 3600;

/// Failed logins allowed in [`FAILURE_WINDOW`] seconds for one user name before its logins are
/// refused for the rest of it, whoever tries: the page password (no user name) is one, each
/// OpenNebula user another (names compared without regard to case, as an LDAP-backed oned
/// may match them), so a tenant's typos never lock the administrator out.
pub const MAX_FAILURES: usize = 5;
pub const FAILURE_WINDOW: i64 = 60;

/// The longest password a login reads (and `--hash-password` accepts): argon2 would take a
/// longer one, but nobody types it, and the check's cost should not be the caller's to choose.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// How many password checks run at once. Each argon2 verification holds its memory cost
/// (19 MiB with the default parameters) for its whole run.
pub const PASSWORD_CHECKS: usize = 2;

impl Sessions {
    /// A new session of `who`; its id, its CSRF token, and the session of the same user it
    /// ended to stay within [`MAX_SESSIONS_PER_USER`] (its login token is for the caller to
    /// revoke).
    pub fn open(&self, now: i64, who: Who) -> Option<(String, String, Option<Tenant>)> {
        let (id, csrf) = (random_token(), random_token());
        if id.is_empty() || csrf.is_empty() {
            return None;
        }
        let mut live = self.live.lock().ok()?;
        live.retain(|_, l| l.until > now);
        let mut ended = None;
        if let Who::Tenant(t) = &who {
            let theirs: Vec<(&String, i64)> = live
                .iter()
                .filter(|(_, l)| matches!(&l.who, Who::Tenant(o) if o.user == t.user))
                .map(|(k, l)| (k, l.until))
                .collect();
            if theirs.len() >= MAX_SESSIONS_PER_USER
                && let Some(oldest) = theirs
                    .iter()
                    .min_by_key(|(_, until)| *until)
                    .map(|(k, _)| (*k).clone())
                && let Some(Live {
                    who: Who::Tenant(o),
                    ..
                }) = live.remove(&oldest)
            {
                ended = Some(o);
            }
        }
        live.insert(
            id.clone(),
            Live {
                csrf: csrf.clone(),
                until: now + SESSION_SECONDS,
                who,
            },
        );
        Some((id, csrf, ended))
    }

    /// The CSRF token of a live session.
    pub fn csrf(&self, id: &str, now: i64) -> Option<String> {
        self.get(id, now).map(|(csrf, _)| csrf)
    }

    /// A live session's CSRF token and who it is.
    pub fn get(&self, id: &str, now: i64) -> Option<(String, Who)> {
        let live = self.live.lock().ok()?;
        live.get(id)
            .filter(|l| l.until > now)
            .map(|l| (l.csrf.clone(), l.who.clone()))
    }

    /// Whether this request asks oned again for a tenant's VMs: one request of a session at
    /// a time, and none for [`RECHECK_BACKOFF`] seconds after one failed.
    pub fn claim_recheck(&self, id: &str, now: i64) -> Claim {
        let Ok(mut live) = self.live.lock() else {
            return Claim::Gone;
        };
        match live.get_mut(id).map(|l| &mut l.who) {
            Some(Who::Tenant(t)) if t.checking => Claim::Underway,
            Some(Who::Tenant(t)) if t.failed_at.is_some_and(|at| now - at < RECHECK_BACKOFF) => {
                Claim::BackingOff
            }
            Some(Who::Tenant(t)) => {
                t.checking = true;
                Claim::Yours
            }
            _ => Claim::Gone,
        }
    }

    /// How the recheck [`Sessions::claim_recheck`] gave this request went: the VMs oned
    /// listed, or a failure.
    pub fn recheck_done(&self, id: &str, vms: Option<std::collections::BTreeSet<u64>>, now: i64) {
        if let Ok(mut live) = self.live.lock()
            && let Some(Live {
                who: Who::Tenant(t),
                ..
            }) = live.get_mut(id)
        {
            t.checking = false;
            match vms {
                Some(vms) => {
                    t.vms = std::sync::Arc::new(vms);
                    t.checked = now;
                    t.failed_at = None;
                }
                None => t.failed_at = Some(now),
            }
        }
    }

    /// Counts a login attempt for `user` ("" for the page password) before its password is
    /// checked, and says whether it may go on: no when [`MAX_FAILURES`] attempts for that name
    /// that failed or are still being checked began in the last [`FAILURE_WINDOW`] seconds.
    /// The count and the test are one step under the lock, so a burst of concurrent attempts
    /// cannot all pass it; an attempt stays counted as a failure unless
    /// [`Sessions::login_succeeded`] takes it back.
    /// OpenNebula users' attempts together are held to [`MAX_TENANT_FAILURES`] (each asks
    /// oned), which never touches the page password's.
    pub fn begin_login(&self, now: i64, user: &str) -> bool {
        let Ok(mut a) = self.attempts.lock() else {
            return false;
        };
        let user = user.to_lowercase();
        a.retain(|(t, _)| now - t < FAILURE_WINDOW);
        let tenants = a.iter().filter(|(_, u)| !u.is_empty()).count();
        if (!user.is_empty() && tenants >= MAX_TENANT_FAILURES)
            || a.iter().filter(|(_, u)| *u == user).count() >= MAX_FAILURES
        {
            return false;
        }
        a.push((now, user));
        true
    }

    /// The attempt for `user` begun at `began` gave the right password: it is no failure.
    pub fn login_succeeded(&self, began: i64, user: &str) {
        let user = user.to_lowercase();
        if let Ok(mut a) = self.attempts.lock()
            && let Some(i) = a.iter().position(|(t, u)| *t == began && *u == user)
        {
            a.swap_remove(i);
        }
    }

    /// Ends a session; who it was.
    pub fn close(&self, id: &str) -> Option<Who> {
        let mut live = self.live.lock().ok()?;
        let key = live
            .keys()
            .find(|k| same(k.as_bytes(), id.as_bytes()))
            .cloned()?;
        live.remove(&key).map(|l| l.who)
    }
}

/// Slots for password checks: at most [`PASSWORD_CHECKS`] run at once, the others (at most
/// [`MAX_FAILURES`] in all, as [`Sessions::begin_login`] lets no more through) wait on their
/// blocking thread.
#[derive(Debug, Default)]
pub struct PasswordChecks {
    running: Mutex<usize>,
    freed: Condvar,
}

impl PasswordChecks {
    /// Whether `given` is the password, checked in a free slot (blocks until there is one).
    pub fn check(&self, credentials: &Credentials, given: &str) -> bool {
        let Ok(mut running) = self.running.lock() else {
            return false;
        };
        while *running >= PASSWORD_CHECKS {
            running = match self.freed.wait(running) {
                Ok(r) => r,
                Err(_) => return false,
            };
        }
        *running += 1;
        drop(running);
        // The slot is given back even if the check unwinds.
        struct Slot<'a>(&'a PasswordChecks);
        impl Drop for Slot<'_> {
            fn drop(&mut self) {
                if let Ok(mut r) = self.0.running.lock() {
                    *r -= 1;
                }
                self.0.freed.notify_one();
            }
        }
        let _slot = Slot(self);
        credentials.password_ok(given)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_tokens_and_sessions() {
        let hash = hash_password("correct horse").expect("hash");
        let c = Credentials {
            api_token: Some("0123456789abcdef-token".into()),
            password_hash: Some(hash),
            admin_token: None,
            web_actions: false,
            tenants: false,
        };
        assert!(c.password_ok("correct horse") && !c.password_ok("wrong"));
        assert!(c.token_ok("0123456789abcdef-token") && !c.token_ok("0123456789abcdef-tokem"));
        assert!(!c.token_ok(""));
        assert!(!format!("{c:?}").contains("token\""));
        let s = Sessions::default();
        let (id, csrf, _) = s.open(100, Who::Admin).expect("session");
        assert_eq!(s.csrf(&id, 101), Some(csrf));
        assert_eq!(s.csrf(&id, 100 + SESSION_SECONDS), None, "expired");
        assert!(matches!(s.close(&id), Some(Who::Admin)));
        assert_eq!(s.csrf(&id, 101), None);
        assert!(s.close(&id).is_none());
        // A tenant's session: one request at a time asks oned again; a failure holds the
        // others off for a while; an answer replaces the VMs.
        let t = Tenant::new("alice".into(), "secret-token".into(), [3].into(), 100);
        assert!(!format!("{t:?}").contains("secret-token"));
        let (id, _, ended) = s.open(100, Who::Tenant(t)).expect("session");
        assert!(ended.is_none());
        assert_eq!(s.claim_recheck(&id, 160), Claim::Yours);
        assert_eq!(s.claim_recheck(&id, 160), Claim::Underway);
        s.recheck_done(&id, None, 161);
        assert_eq!(s.claim_recheck(&id, 162), Claim::BackingOff);
        assert_eq!(s.claim_recheck(&id, 161 + RECHECK_BACKOFF), Claim::Yours);
        s.recheck_done(&id, Some([4, 5].into()), 172);
        match s.get(&id, 173) {
            Some((_, Who::Tenant(t))) => {
                assert_eq!(
                    (
                        t.vms.iter().copied().collect::<Vec<_>>(),
                        t.checked,
                        t.checking
                    ),
                    (vec![4, 5], 172, false)
                );
            }
            _ => panic!("the tenant's session"),
        }
        assert_eq!(s.claim_recheck("no-such-session", 173), Claim::Gone);
        // A user's eleventh session ends their oldest, which the caller revokes.
        for k in 1..MAX_SESSIONS_PER_USER as i64 {
            let t = Tenant::new("alice".into(), format!("token-{k}"), [3].into(), 100 + k);
            assert!(
                s.open(100 + k, Who::Tenant(t))
                    .expect("session")
                    .2
                    .is_none()
            );
        }
        let t = Tenant::new("alice".into(), "token-last".into(), [3].into(), 200);
        let (_, _, ended) = s.open(200, Who::Tenant(t)).expect("session");
        assert_eq!(ended.map(|t| t.token), Some("secret-token".to_string()));
        assert!(s.get(&id, 201).is_none(), "the oldest session ended");
        // An attempt counts from its start; a success takes it back.
        assert!(s.begin_login(199, ""));
        s.login_succeeded(199, "");
        for k in 0..MAX_FAILURES as i64 {
            assert!(s.begin_login(200 + k, ""));
        }
        assert!(!s.begin_login(205, ""), "too many attempts in a minute");
        assert!(
            !s.begin_login(200 + FAILURE_WINDOW - 1, ""),
            "all five in the minute"
        );
        // Another user name has its own count: a tenant's failures are not the admin's.
        for k in 0..MAX_FAILURES as i64 {
            assert!(s.begin_login(210 + k, "alice"));
        }
        assert!(!s.begin_login(215, "alice") && s.begin_login(215, "bob"));
        assert!(
            !s.begin_login(215, "ALICE"),
            "names count without regard to case"
        );
        // Every OpenNebula name together: at most MAX_TENANT_FAILURES, the admin's apart.
        let t = Sessions::default();
        for k in 0..MAX_TENANT_FAILURES {
            assert!(t.begin_login(300, &format!("user{k}")));
        }
        assert!(!t.begin_login(300, "someone-else") && t.begin_login(300, ""));
        assert!(
            s.begin_login(200 + FAILURE_WINDOW + 5, ""),
            "a minute later"
        );
        assert!(hash_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        let checks = PasswordChecks::default();
        assert!(checks.check(&c, "correct horse") && !checks.check(&c, "wrong"));
        assert!(!same(b"abc", b"abd") && same(b"abc", b"abc") && !same(b"ab", b"abc"));
    }
}
