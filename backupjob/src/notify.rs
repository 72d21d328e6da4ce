//! Notifications (docs/notifications.md): when a backup job's run leaves VMs in ERROR, a sync
//! run fails or a verify run finds damage, one message per run (not per VM) by mail (SMTP with
//! STARTTLS) and/or a webhook (a JSON POST).
//!
//! Settings come from the environment (the services' environment file): `BACKSTOP_NOTIFY_EMAIL`
//! (recipients, comma-separated), `BACKSTOP_SMTP_SERVER` (`host[:port]`, port 587 by default),
//! `BACKSTOP_SMTP_USER` and `BACKSTOP_SMTP_PASSWORD_FILE` (or `BACKSTOP_SMTP_PASSWORD`),
//! `BACKSTOP_SMTP_FROM`, `BACKSTOP_NOTIFY_WEBHOOK` (an http or https URL) and
//! `BACKSTOP_NOTIFY_CA_FILE` (a private CA for the mail server and the webhook). A job's
//! template may name its own `NOTIFY_EMAIL` and `NOTIFY_WEBHOOK`, or `NOTIFY = NO`. Mail always
//! goes over STARTTLS with the server's certificate verified. A message that cannot be sent is a
//! line in the runner's output; it never fails the run. The SMTP password is never printed, and
//! a webhook's URL (whose path or query is its token) is printed only as `scheme://host[:port]`
//! ([`backstop_protocol::redact::webhook`]), in errors and Debug output alike.

use crate::Error;
use crate::error::{input, notify_error};
use backstop_protocol::template::Template;
use std::path::PathBuf;
use std::time::Duration;

/// Where messages go.
#[derive(Clone, Default)]
pub struct Settings {
    pub email_to: Vec<String>,
    pub smtp_server: Option<(String, u16)>,
    pub smtp_user: Option<String>,
    smtp_password: Option<String>,
    pub smtp_from: Option<String>,
    pub webhook: Option<String>,
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("email_to", &self.email_to)
            .field("smtp_server", &self.smtp_server)
            .field("smtp_user", &self.smtp_user)
            .field(
                "smtp_password",
                &self.smtp_password.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "webhook",
                &self
                    .webhook
                    .as_deref()
                    .map(backstop_protocol::redact::webhook),
            )
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl Settings {
    /// The global settings from the environment.
    pub fn from_env() -> Result<Settings, Error> {
        let smtp_server = match var("BACKSTOP_SMTP_SERVER") {
            None => None,
            Some(s) => Some(host_port(&s)?),
        };
        let smtp_password = match var("BACKSTOP_SMTP_PASSWORD_FILE") {
            Some(path) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| {
                        input(format!(
                            "cannot read BACKSTOP_SMTP_PASSWORD_FILE {path}: {e}"
                        ))
                    })?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            ),
            None => std::env::var("BACKSTOP_SMTP_PASSWORD")
                .ok()
                .filter(|p| !p.is_empty()),
        };
        let webhook = var("BACKSTOP_NOTIFY_WEBHOOK");
        if let Some(w) = &webhook {
            check_url(w)?;
        }
        Ok(Settings {
            email_to: var("BACKSTOP_NOTIFY_EMAIL").map_or_else(Vec::new, |e| list(&e)),
            smtp_server,
            smtp_user: var("BACKSTOP_SMTP_USER"),
            smtp_password,
            smtp_from: var("BACKSTOP_SMTP_FROM"),
            webhook,
            ca_file: var("BACKSTOP_NOTIFY_CA_FILE").map(PathBuf::from),
        })
    }

    /// These settings with a job template's own `NOTIFY_EMAIL`, `NOTIFY_WEBHOOK` and
    /// `NOTIFY = NO`.
    pub fn for_job(&self, template: &str) -> Result<Settings, Error> {
        let t = Template::parse(template).map_err(|e| input(e.to_string()))?;
        if t.get("NOTIFY")
            .is_some_and(|n| n.trim().eq_ignore_ascii_case("NO"))
        {
            return Ok(Settings::default());
        }
        let mut s = self.clone();
        if let Some(e) = t.get("NOTIFY_EMAIL") {
            s.email_to = list(e);
        }
        if let Some(w) = t.get("NOTIFY_WEBHOOK").map(str::trim) {
            check_url(w)?;
            s.webhook = Some(w.to_string());
        }
        Ok(s)
    }

    pub fn is_empty(&self) -> bool {
        self.email_to.is_empty() && self.webhook.is_none()
    }
}

fn host_port(text: &str) -> Result<(String, u16), Error> {
    match text.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') => Ok((
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse()
                .map_err(|_| input(format!("BACKSTOP_SMTP_SERVER {text:?}: bad port")))?,
        )),
        _ => Ok((text.to_string(), 587)),
    }
}

fn check_url(url: &str) -> Result<(), Error> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(input(format!(
            "the webhook {} is not an http:// or https:// URL",
            backstop_protocol::redact::webhook(url)
        )))
    }
}

/// One run's message.
#[derive(Debug, Clone)]
pub struct Message {
    /// `backup_job_failed`, `sync_job_failed`, `verify_job_damage`.
    pub event: &'static str,
    /// `backup job`, `sync job`, `verify job`.
    pub kind: &'static str,
    pub job_id: u64,
    pub job_name: String,
    /// One line for the subject.
    pub summary: String,
    /// What failed: (a VM id or a repository, the reason).
    pub failures: Vec<(String, String)>,
}

impl Message {
    fn subject(&self) -> String {
        format!(
            "backstop: {} {} ({}): {}",
            self.kind, self.job_id, self.job_name, self.summary
        )
    }

    fn text(&self, host: &str) -> String {
        let mut out = format!(
            "{}\n\n{} {} ({}) on {host}:\n",
            self.subject(),
            self.kind,
            self.job_id,
            self.job_name
        );
        for (what, why) in &self.failures {
            out.push_str(&format!("  {what}: {why}\n"));
        }
        out
    }

    fn json(&self, host: &str) -> serde_json::Value {
        let failures: Vec<_> = self
            .failures
            .iter()
            .map(|(what, why)| serde_json::json!({"what": what, "reason": why}))
            .collect();
        serde_json::json!({
            "event": self.event,
            "job": {"kind": self.kind, "id": self.job_id, "name": self.job_name},
            "summary": self.summary,
            "host": host,
            "time": jiff::Timestamp::now().to_string(),
            "failures": failures,
        })
    }
}

/// Sends `message` where `settings` say; a line per send that failed (or was not possible).
pub fn send(settings: &Settings, message: &Message) -> Vec<String> {
    let host = backstop_image::process::hostname();
    let mut problems = Vec::new();
    if !settings.email_to.is_empty()
        && let Err(e) = send_mail(settings, message, &host)
    {
        problems.push(format!("notification by mail not sent: {e}"));
    }
    if let Some(url) = &settings.webhook
        && let Err(e) = post(url, settings.ca_file.as_deref(), &message.json(&host))
    {
        problems.push(format!(
            "notification to the webhook {} not sent: {e}",
            backstop_protocol::redact::webhook(url)
        ));
    }
    problems
}

fn send_mail(settings: &Settings, message: &Message, host: &str) -> Result<(), Error> {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{SmtpTransport, Transport};
    let (server, port) = settings
        .smtp_server
        .clone()
        .ok_or_else(|| notify_error("BACKSTOP_SMTP_SERVER is not set"))?;
    let from = settings
        .smtp_from
        .clone()
        .unwrap_or_else(|| format!("backstop@{host}"));
    let mut builder = lettre::Message::builder()
        .from(
            from.parse()
                .map_err(|e| notify_error(format!("BACKSTOP_SMTP_FROM {from:?}: {e}")))?,
        )
        .subject(message.subject())
        .header(ContentType::TEXT_PLAIN);
    for to in &settings.email_to {
        builder = builder.to(to
            .parse()
            .map_err(|e| notify_error(format!("the recipient {to:?}: {e}")))?);
    }
    let mail = builder
        .body(message.text(host))
        .map_err(|e| notify_error(format!("the message: {e}")))?;
    let mut tls = TlsParameters::builder(server.clone());
    if let Some(ca) = &settings.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| notify_error(format!("cannot read {}: {e}", ca.display())))?;
        tls = tls.add_root_certificate(
            Certificate::from_pem(&pem)
                .map_err(|e| notify_error(format!("{}: {e}", ca.display())))?,
        );
    }
    let tls = tls.build().map_err(|e| notify_error(format!("TLS: {e}")))?;
    let mut transport = SmtpTransport::builder_dangerous(server.as_str())
        .port(port)
        .tls(Tls::Required(tls))
        .timeout(Some(Duration::from_secs(30)));
    if let (Some(user), Some(password)) = (&settings.smtp_user, &settings.smtp_password) {
        transport = transport.credentials(Credentials::new(user.clone(), password.clone()));
    }
    transport
        .build()
        .send(&mail)
        .map(|_| ())
        .map_err(|e| notify_error(format!("{server}:{port}: {e}")))
}

fn post(url: &str, ca: Option<&std::path::Path>, body: &serde_json::Value) -> Result<(), Error> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
    let roots = match ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| notify_error(format!("cannot read {}: {e}", path.display())))?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| notify_error(format!("{}: {e}", path.display())))?
                .to_owned();
            RootCerts::new_with_certs(&[cert])
        }
        None => RootCerts::PlatformVerifier,
    };
    let tls = TlsConfig::builder()
        .provider(TlsProvider::NativeTls)
        .root_certs(roots)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .user_agent("backstop")
        .build()
        .into();
    agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .map(|_| ())
        .map_err(|e| notify_error(why_not_sent(&e)))
}

/// Why a webhook's request failed, without its URL: the caller names the webhook (redacted).
/// The HTTP client's errors about the URL itself may quote it whole, so they are said in
/// words of our own; the others are passed through [`backstop_protocol::redact::text`].
fn why_not_sent(e: &ureq::Error) -> String {
    use ureq::Error as E;
    match e {
        E::StatusCode(code) => format!("it answered HTTP {code}"),
        E::BadUri(_) | E::Http(_) => "the HTTP client cannot use its URL".into(),
        E::Other(_) => "the request failed".into(),
        other => backstop_protocol::redact::text(&other.to_string()),
    }
}

/// The message for a backup job's run that left VMs in ERROR: the job's VMs that ended in
/// ERROR at or after `since_ms`; `None` when none did.
pub fn job_failures(
    st: &crate::state::State,
    job_id: u64,
    since_ms: i64,
) -> Result<Option<Message>, crate::Error> {
    let Some(crate::state::JobRow { name, .. }) = st.jobs()?.into_iter().find(|j| j.id == job_id)
    else {
        return Ok(None);
    };
    let rows = st.job_vms(job_id)?;
    let failures: Vec<(String, String)> = rows
        .iter()
        .filter(|r| {
            r.state == Some(crate::state::VmState::Error)
                && r.ended_at.is_some_and(|e| e >= since_ms)
        })
        .map(|r| {
            (
                format!("VM {}", r.vm_id),
                r.reason
                    .clone()
                    .unwrap_or_else(|| "no reason recorded".into()),
            )
        })
        .collect();
    if failures.is_empty() {
        return Ok(None);
    }
    Ok(Some(Message {
        event: "backup_job_failed",
        kind: "backup job",
        job_id,
        job_name: name,
        summary: format!("{} of {} VMs failed", failures.len(), rows.len()),
        failures,
    }))
}

/// Sends the message of a backup job's run, if it failed in part, with the job's settings;
/// the lines to print.
pub fn after_job_run(
    st: &crate::state::State,
    global: &Settings,
    job_id: u64,
    since_ms: i64,
) -> Vec<String> {
    let message = match job_failures(st, job_id, since_ms) {
        Ok(Some(m)) => m,
        Ok(None) => return Vec::new(),
        Err(e) => return vec![format!("notification not sent: {e}")],
    };
    let template = st
        .jobs()
        .ok()
        .and_then(|jobs| jobs.into_iter().find(|j| j.id == job_id))
        .map(|j| j.template)
        .unwrap_or_default();
    match global.for_job(&template) {
        Ok(s) if s.is_empty() => Vec::new(),
        Ok(s) => send(&s, &message),
        Err(e) => vec![format!("notification not sent: backup job {job_id}: {e}")],
    }
}

/// Sends the message of a backup job that missed its schedule, with the job's settings; the
/// lines to print.
pub fn after_missed(
    st: &crate::state::State,
    global: &Settings,
    job_id: u64,
    why: &str,
) -> Vec<String> {
    let Some(crate::state::JobRow { name, template, .. }) = st
        .jobs()
        .ok()
        .and_then(|jobs| jobs.into_iter().find(|j| j.id == job_id))
    else {
        return Vec::new();
    };
    let message = Message {
        event: "backup_job_missed_schedule",
        kind: "backup job",
        job_id,
        job_name: name,
        summary: "missed its schedule".into(),
        failures: vec![("schedule".into(), why.to_string())],
    };
    match global.for_job(&template) {
        Ok(s) if s.is_empty() => Vec::new(),
        Ok(s) => send(&s, &message),
        Err(e) => vec![format!("notification not sent: backup job {job_id}: {e}")],
    }
}

/// Sends the message of a sync or verify run that failed (`failures`: one line each, as the
/// run printed them), with the job's settings; the lines to print.
pub fn after_run(
    global: &Settings,
    (kind, job_id, template): (&'static str, u64, &str),
    failures: &[String],
) -> Vec<String> {
    if failures.is_empty() {
        return Vec::new();
    }
    let name = Template::parse(template)
        .ok()
        .and_then(|t| t.get("NAME").map(str::to_string))
        .unwrap_or_default();
    let (event, summary) = if kind == "sync job" {
        (
            "sync_job_failed",
            format!("{} repositories failed", failures.len()),
        )
    } else {
        (
            "verify_job_damage",
            format!("damage in {} repositories", failures.len()),
        )
    };
    let message = Message {
        event,
        kind,
        job_id,
        job_name: name,
        summary,
        failures: failures
            .iter()
            .map(|l| match l.split_once(": ") {
                Some((what, why)) => (what.to_string(), why.to_string()),
                None => (String::new(), l.clone()),
            })
            .collect(),
    };
    match global.for_job(template) {
        Ok(s) if s.is_empty() => Vec::new(),
        Ok(s) => send(&s, &message),
        Err(e) => vec![format!("notification not sent: {kind} {job_id}: {e}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_settings_override_the_global_ones() {
        let global = Settings {
            email_to: vec!["ops@example.org".into()],
            webhook: Some("https://hooks.example.org/a".into()),
            smtp_password: Some("s3cret".into()),
            ..Settings::default()
        };
        let s = global
            .for_job("NAME=a\nNOTIFY_EMAIL=\"a@example.org, b@example.org\"\n")
            .expect("job");
        assert_eq!(s.email_to, ["a@example.org", "b@example.org"]);
        assert_eq!(s.webhook.as_deref(), Some("https://hooks.example.org/a"));
        assert!(
            global
                .for_job("NAME=a\nNOTIFY=no\n")
                .expect("off")
                .is_empty()
        );
        let e = global
            .for_job("NAME=a\nNOTIFY_WEBHOOK=\"file:///etc/passwd\"\n")
            .expect_err("not http");
        assert!(e.to_string().contains("not an http"), "{e}");
        assert!(!format!("{global:?}").contains("s3cret"));
        let hooked = Settings {
            webhook: Some("https://hooks.example:8443/T0k3n?token=T0k3n".into()),
            ..global.clone()
        };
        let debug = format!("{hooked:?}");
        assert!(
            !debug.contains("T0k3n") && debug.contains("https://hooks.example:8443/***"),
            "{debug}"
        );
        let e = global
            .for_job("NAME=a\nNOTIFY_WEBHOOK=\"hooks.example/T0k3n\"\n")
            .expect_err("no scheme");
        assert_eq!(
            e.to_string(),
            "the webhook hooks.example/*** is not an http:// or https:// URL"
        );
        assert_eq!(host_port("mail:25").expect("port"), ("mail".into(), 25));
        assert_eq!(host_port("mail").expect("default"), ("mail".into(), 587));
        assert!(host_port("mail:x").is_err());
    }
}
