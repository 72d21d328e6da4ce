//! One S3 request at a time, as a blocking call: signed by rusty-s3, sent by ureq, retried
//! with backoff when the failure may pass (a connection refused or reset, a timeout, any 5xx,
//! 408 and 429), never on another 4xx. Errors name the operation and the object key, never a
//! URL: a presigned URL carries a signature that is a short-lived credential.

use super::S3Options;
use rusty_s3::{Bucket, Credentials, S3Action};
use std::io::Read;
use std::time::Duration;
use ureq::http::Response;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// How long a signed request stays valid: long enough for a slow upload to start.
pub(super) const SIGNED_FOR: Duration = Duration::from_secs(3600);

/// Why a request failed, for the caller to decide (a missing object is an answer for some).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// 404: no such key (or no such bucket: `code` tells).
    NotFound { code: Option<String> },
    /// Anything else, said in one line.
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotFound { code } => match code {
                Some(c) => write!(f, "not found ({c})"),
                None => write!(f, "not found"),
            },
            Failure::Other(s) => f.write_str(s),
        }
    }
}

/// One attempt's outcome when it failed.
pub(super) enum Attempt {
    Transient(String),
    Final(Failure),
}

/// The HTTP side of a backend: the agent (its pooled connections), the bucket and the keys.
pub(super) struct Client {
    agent: ureq::Agent,
    pub(super) bucket: Bucket,
    credentials: Credentials,
    retries: u32,
    first_backoff: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("bucket", &self.bucket.name())
            .finish_non_exhaustive()
    }
}

/// Reads a PEM file of CA certificates (RESTIC_S3_CACERT).
fn load_ca(path: &std::path::Path) -> Result<Vec<Certificate<'static>>, crate::Error> {
    let pem = std::fs::read(path)
        .map_err(|e| crate::Error::io(format!("cannot read the CA file {}", path.display()), e))?;
    let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c.to_owned())),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()
        .map_err(|e| {
            crate::Error::new(format!("the CA file {} is not PEM: {e}", path.display()))
        })?;
    if certs.is_empty() {
        return Err(crate::Error::new(format!(
            "the CA file {} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

impl Client {
    pub(super) fn new(bucket: Bucket, options: &S3Options) -> Result<Client, crate::Error> {
        let roots = match &options.ca_cert {
            // As restic's --cacert: these roots instead of the system's.
            Some(path) => RootCerts::new_with_certs(&load_ca(path)?),
            None => RootCerts::PlatformVerifier,
        };
        let tls = TlsConfig::builder()
            .provider(TlsProvider::NativeTls)
            .root_certs(roots)
            .disable_verification(options.insecure_tls)
            .build();
        let connections = options.connections();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls)
            .max_idle_connections(connections * 2)
            .max_idle_connections_per_host(connections * 2)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_send_request(Some(Duration::from_secs(60)))
            .timeout_send_body(Some(Duration::from_secs(600)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .timeout_recv_body(Some(Duration::from_secs(600)))
            .user_agent("backstop")
            .build()
            .into();
        Ok(Client {
            agent,
            bucket,
            credentials: Credentials::new(
                options.access_key_id.clone(),
                options.secret_access_key.expose().to_string(),
            ),
            retries: options.retries,
            first_backoff: options.first_backoff,
        })
    }

    pub(super) fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    pub(super) fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    pub(super) fn url<'a>(&self, action: &impl S3Action<'a>) -> String {
        action.sign(SIGNED_FOR).to_string()
    }

    /// Runs `op` until it succeeds, fails for good, or the retries are spent; the last
    /// transient reason is in the error.
    pub(super) fn with_retries<T>(
        &self,
        what: &str,
        op: impl Fn() -> Result<T, Attempt>,
    ) -> Result<T, Failure> {
        let mut delay = self.first_backoff;
        let mut attempt = 0;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(Attempt::Final(f)) => return Err(f),
                Err(Attempt::Transient(why)) => {
                    attempt += 1;
                    if attempt > self.retries {
                        return Err(Failure::Other(format!(
                            "{why} ({what}; gave up after {attempt} attempts)"
                        )));
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(16));
                }
            }
        }
    }
}

/// A transport error, classified. Its text never holds the URL.
pub(super) fn transport(e: ureq::Error, endpoint: &str) -> Attempt {
    use ureq::Error as E;
    match e {
        E::Timeout(t) => Attempt::Transient(format!("{endpoint}: timed out ({t})")),
        E::Io(io) => Attempt::Transient(format!("{endpoint}: {io}")),
        E::ConnectionFailed => Attempt::Transient(format!("{endpoint}: cannot connect")),
        E::HostNotFound => Attempt::Transient(format!("{endpoint}: host not found")),
        E::Protocol(p) => Attempt::Transient(format!("{endpoint}: HTTP protocol error: {p}")),
        E::NativeTls(t) => Attempt::Final(Failure::Other(format!(
            "{endpoint}: TLS: {t} (RESTIC_S3_CACERT names the CA that signed the server's certificate)"
        ))),
        E::Tls(t) => Attempt::Final(Failure::Other(format!("{endpoint}: TLS: {t}"))),
        E::BodyExceedsLimit(n) => Attempt::Final(Failure::Other(format!(
            "{endpoint}: the answer is larger than {n} bytes"
        ))),
        other => Attempt::Final(Failure::Other(format!(
            "{endpoint}: {}",
            describe_other(&other)
        ))),
    }
}

/// Errors that can hold a URL are described by kind only.
fn describe_other(e: &ureq::Error) -> String {
    match e {
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => "the request could not be built".into(),
        ureq::Error::InvalidProxyUrl => "the proxy setting (https_proxy) is not a URL".into(),
        ureq::Error::RedirectFailed | ureq::Error::TooManyRedirects => {
            "the server redirected the request".into()
        }
        other => format!("{other}").lines().next().unwrap_or("").to_string(),
    }
}

/// The `<Code>` and `<Message>` of an S3 error document, if the body is one.
pub(super) fn error_code(body: &str) -> (Option<String>, Option<String>) {
    let field = |name: &str| {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&close)? + start;
        let text: String = body[start..end]
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        (!text.is_empty()).then_some(text)
    };
    (field("Code"), field("Message"))
}

/// Sorts a response by its status: success, a missing object, something to retry, or a
/// failure said with S3's own code.
pub(super) fn check(
    resp: Result<Response<ureq::Body>, ureq::Error>,
    endpoint: &str,
) -> Result<Response<ureq::Body>, Attempt> {
    let mut resp = resp.map_err(|e| transport(e, endpoint))?;
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(resp);
    }
    let mut body = String::new();
    let _ = resp
        .body_mut()
        .as_reader()
        .take(64 * 1024)
        .read_to_string(&mut body);
    let (code, message) = error_code(&body);
    if status == 404 {
        return Err(Attempt::Final(Failure::NotFound { code }));
    }
    let said = match (&code, &message) {
        (Some(c), Some(m)) => format!("HTTP {status} {c}: {m}"),
        (Some(c), None) => format!("HTTP {status} {c}"),
        _ => format!("HTTP {status}"),
    };
    if status >= 500 || status == 408 || status == 429 {
        Err(Attempt::Transient(said))
    } else {
        Err(Attempt::Final(Failure::Other(said)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_error_documents_are_read() {
        let body = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code>\
                    <Message>The request signature we calculated does not match</Message></Error>";
        assert_eq!(
            error_code(body),
            (
                Some("SignatureDoesNotMatch".into()),
                Some("The request signature we calculated does not match".into())
            )
        );
        assert_eq!(error_code("<html>bad gateway</html>"), (None, None));
        assert_eq!(error_code("<Code></Code>"), (None, None));
    }
}
