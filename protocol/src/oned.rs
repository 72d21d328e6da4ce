//! A client for oned's XML-RPC API, found where OpenNebula's own tools find it.
//!
//! - Endpoint: `ONE_XMLRPC`, else the first line of `~/.one/one_endpoint`, else
//!   `http://localhost:2633/RPC2`.
//! - Session: the first line of the file `ONE_AUTH` names, else `~/.one/one_auth`, else
//!   `/var/lib/one/.one/one_auth`: `user:password`, sent as oned's core authentication expects.
//!
//! `http://` (oned's own port) and `https://` endpoints (a TLS proxy in front of oned, as
//! production front-ends have) are spoken. Over https the server's certificate is verified
//! against the system's roots and, as OpenNebula's own clients do, the certificates in the
//! directory `ONE_CERT_DIR` names (a private CA), and its name against the endpoint's host;
//! `ONE_DISABLE_SSL_VERIFY`, which OpenNebula's clients honour, is refused. The session string
//! is a secret: it is never part of an error, a log line or `Debug` output.

use crate::xmlrpc::{self, OnedReply, Value};
use crate::{Error, ErrorKind};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEFAULT_CIPHER_AUTH: &str = "/var/lib/one/.one/onegate_auth";
const DEFAULT_ENDPOINT: &str = "http://localhost:2633/RPC2";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// oned's biggest answers (a pool listing) are megabytes; a datastore or an id is tiny.
const MAX_BODY: usize = 64 << 20;

/// The API endpoint and the session to use.
pub struct OnedClient {
    /// The endpoint as it may be printed ([`crate::redact::url`]): only `host`,
    /// `port`, `path` and `tls` are used to connect.
    endpoint: String,
    host: String,
    port: u16,
    path: String,
    /// Over TLS (`https://`).
    tls: bool,
    session: String,
}

impl std::fmt::Debug for OnedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnedClient")
            .field("endpoint", &self.endpoint)
            .field("session", &"<redacted>")
            .finish()
    }
}

fn oned_error(message: String) -> Error {
    Error::new(ErrorKind::Oned, message)
}

/// oned's error code for an object that does not exist (or is not visible to the user).
pub const NO_EXISTS: i64 = 0x0400;

/// The one line for a call oned refused.
pub fn refused(method: &str, message: &str, code: i64) -> Error {
    oned_error(format!(
        "oned refused {method} (error {code}): {}",
        message.lines().next().unwrap_or_default()
    ))
}

fn first_line(path: &Path, what: &str) -> Result<String, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| oned_error(format!("cannot read {what} {}: {e}", path.display())))?;
    let line = text.lines().next().unwrap_or_default().trim().to_string();
    if line.is_empty() {
        return Err(oned_error(format!("{what} {} is empty", path.display())));
    }
    Ok(line)
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

fn endpoint_from_env() -> Result<String, Error> {
    Ok(match std::env::var("ONE_XMLRPC") {
        Ok(e) if !e.trim().is_empty() => e.trim().to_string(),
        _ => match home().map(|h| h.join(".one/one_endpoint")) {
            Some(p) if p.exists() => first_line(&p, "the endpoint file")?,
            _ => DEFAULT_ENDPOINT.to_string(),
        },
    })
}

impl OnedClient {
    /// The endpoint and session from the environment and the standard files.
    pub fn from_env() -> Result<OnedClient, Error> {
        OnedClient::configured(None, None)
    }

    /// The endpoint and credentials file given (a runner's datastore may name them), each
    /// found as [`OnedClient::from_env`] finds it when not given.
    pub fn configured(endpoint: Option<&str>, auth: Option<&Path>) -> Result<OnedClient, Error> {
        let endpoint = match endpoint.map(str::trim).filter(|e| !e.is_empty()) {
            Some(e) => e.to_string(),
            None => endpoint_from_env()?,
        };
        let auth = match auth {
            Some(p) => p.to_path_buf(),
            None => match std::env::var_os("ONE_AUTH").filter(|a| !a.is_empty()) {
                Some(p) => PathBuf::from(p),
                None => match home().map(|h| h.join(".one/one_auth")) {
                    Some(p) if p.exists() => p,
                    _ => PathBuf::from("/var/lib/one/.one/one_auth"),
                },
            },
        };
        let session = first_line(&auth, "the OpenNebula credentials file")?;
        if !session.contains(':') {
            return Err(oned_error(format!(
                "the OpenNebula credentials file {} does not hold user:password",
                auth.display()
            )));
        }
        OnedClient::new(&endpoint, session)
    }

    /// The endpoint only, for calls that bring their own session ([`OnedClient::call_as`]).
    pub fn from_env_endpoint() -> Result<OnedClient, Error> {
        OnedClient::new(&endpoint_from_env()?, String::new())
    }

    /// A client for `endpoint` (`http://host[:port]/path`) with a session string.
    pub fn new(endpoint: &str, session: String) -> Result<OnedClient, Error> {
        let shown = crate::redact::url(endpoint);
        let bad = |why: &str| oned_error(format!("ONE_XMLRPC endpoint {shown:?} {why}"));
        let (tls, rest) = match (
            endpoint.strip_prefix("https://"),
            endpoint.strip_prefix("http://"),
        ) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            _ => return Err(bad("is not an http:// or https:// URL")),
        };
        if tls && std::env::var_os("ONE_DISABLE_SSL_VERIFY").is_some_and(|v| !v.is_empty()) {
            return Err(oned_error(
                "ONE_DISABLE_SSL_VERIFY is set: backstop always verifies oned's certificate; trust a private CA with ONE_CERT_DIR instead".into(),
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/RPC2"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>().map_err(|_| bad("has a bad port"))?,
            ),
            _ => (authority, if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        if authority.contains('@') {
            // It would be taken for part of the host name, and print the password with it.
            return Err(bad(
                "holds a user name or password: the login comes from ONE_AUTH, never the URL",
            ));
        }
        Ok(OnedClient {
            endpoint: shown,
            host: host.to_string(),
            port,
            path: path.to_string(),
            tls,
            session,
        })
    }

    /// The same endpoint with another session string (a user's own login, as a dashboard
    /// checks it for an OpenNebula user).
    pub fn with_session(&self, session: String) -> OnedClient {
        OnedClient {
            endpoint: self.endpoint.clone(),
            host: self.host.clone(),
            port: self.port,
            path: self.path.clone(),
            tls: self.tls,
            session,
        }
    }

    /// The endpoint as it may be printed (its query hidden).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The session's user name (what precedes the first `:`).
    pub fn user(&self) -> &str {
        self.session.split(':').next().unwrap_or_default()
    }

    /// Calls `method` with the session followed by `params`; oned's result on success.
    pub fn call(&self, method: &str, params: &[Value]) -> Result<Value, Error> {
        self.call_as(&self.session, method, params)
    }

    /// Calls `method` with another session string (a server-cipher login).
    pub fn call_as(&self, session: &str, method: &str, params: &[Value]) -> Result<Value, Error> {
        match self.reply_as(session, method, params)? {
            OnedReply::Ok(v) => Ok(v),
            OnedReply::Failed { message, code } => Err(refused(method, &message, code)),
        }
    }

    /// Calls `method`; oned's answer, a refusal included (its error code tells a missing
    /// object, [`NO_EXISTS`], from the rest). Only what never reached oned is an error.
    pub fn reply(&self, method: &str, params: &[Value]) -> Result<OnedReply, Error> {
        self.reply_as(&self.session, method, params)
    }

    /// [`OnedClient::reply`] with another session string.
    pub fn reply_as(
        &self,
        session: &str,
        method: &str,
        params: &[Value],
    ) -> Result<OnedReply, Error> {
        let mut all = Vec::with_capacity(params.len() + 1);
        all.push(Value::Str(session.to_string()));
        all.extend_from_slice(params);
        let body = xmlrpc::method_call(method, &all);
        let response = self.post(&body).map_err(|e| {
            oned_error(format!(
                "cannot reach oned at {} for {method}: {e}",
                self.endpoint
            ))
        })?;
        let values = xmlrpc::parse_response(&response)
            .map_err(|e| oned_error(format!("oned at {} answered {method}: {e}", self.endpoint)))?;
        xmlrpc::oned_reply(&values)
            .map_err(|e| oned_error(format!("oned at {} answered {method}: {e}", self.endpoint)))
    }

    /// The XML document of `<kind>.info` (`one.vm.info`, `one.image.info`, ...).
    pub fn document(&self, method: &str, id: u64) -> Result<String, Error> {
        match self.call(method, &[Value::Int(id as i64), Value::Bool(true)])? {
            Value::Str(xml) => Ok(xml),
            other => Err(oned_error(format!(
                "{method} {id} returned {other:?}, not a document"
            ))),
        }
    }

    /// `<kind>.info` of an object that may be gone: `None` when oned says it does not exist.
    pub fn document_if_any(&self, method: &str, id: u64) -> Result<Option<String>, Error> {
        match self.reply(method, &[Value::Int(id as i64), Value::Bool(true)])? {
            OnedReply::Ok(Value::Str(xml)) => Ok(Some(xml)),
            OnedReply::Ok(other) => Err(oned_error(format!(
                "{method} {id} returned {other:?}, not a document"
            ))),
            OnedReply::Failed { code, .. } if code == NO_EXISTS => Ok(None),
            OnedReply::Failed { message, code } => Err(refused(method, &message, code)),
        }
    }

    /// One page of the VMs that are not DONE, as `one.vmpool.info` lists them (each VM's
    /// short document: state, host, labels): `count` VMs after the first `offset`, of every
    /// user the session may see.
    pub fn vm_pool_page(&self, offset: u64, count: u64) -> Result<String, Error> {
        // oned reads an end id below -1 as a page size, the start id then being an offset.
        let v = self.call(
            "one.vmpool.info",
            &[
                Value::Int(-2),
                Value::Int(offset as i64),
                Value::Int(-(count.max(2) as i64)),
                Value::Int(-1),
            ],
        )?;
        match v {
            Value::Str(xml) => Ok(xml),
            other => Err(oned_error(format!(
                "one.vmpool.info returned {other:?}, not a document"
            ))),
        }
    }

    /// `one.vm.backup`: oned backs VM `vm` up into datastore `ds`, a new chain with `reset`.
    pub fn vm_backup(&self, vm: u64, ds: u64, reset: bool) -> Result<(), Error> {
        self.call(
            "one.vm.backup",
            &[
                Value::Int(vm as i64),
                Value::Int(ds as i64),
                Value::Bool(reset),
            ],
        )
        .map(|_| ())
    }

    /// `one.vm.backupcancel`.
    pub fn vm_backup_cancel(&self, vm: u64) -> Result<(), Error> {
        self.call("one.vm.backupcancel", &[Value::Int(vm as i64)])
            .map(|_| ())
    }

    /// `one.vm.updateconf` in append mode: the sections `template` holds are merged into the
    /// VM's, the others are left as they are (replace mode would drop them).
    pub fn vm_updateconf_append(&self, vm: u64, template: &str) -> Result<(), Error> {
        self.call(
            "one.vm.updateconf",
            &[
                Value::Int(vm as i64),
                Value::Str(template.to_string()),
                Value::Int(1),
            ],
        )
        .map(|_| ())
    }

    /// `one.image.delete`: oned removes the image, a backup image with the datastore's `rm`.
    pub fn image_delete(&self, image: u64) -> Result<(), Error> {
        self.call(
            "one.image.delete",
            &[Value::Int(image as i64), Value::Bool(false)],
        )
        .map(|_| ())
    }

    /// `one.datastore.info` with decrypted secrets, as a typed datastore.
    pub fn datastore(&self, id: u64) -> Result<crate::message::Datastore, Error> {
        let v = self.call(
            "one.datastore.info",
            &[Value::Int(id as i64), Value::Bool(true)],
        )?;
        let Value::Str(xml) = v else {
            return Err(oned_error(format!(
                "one.datastore.info {id} returned {v:?}, not a document"
            )));
        };
        let root = crate::xml::Element::parse(&xml)
            .map_err(|e| oned_error(format!("one.datastore.info {id}: {e}")))?;
        crate::message::Datastore::from_xml(&root)
            .map_err(|e| oned_error(format!("one.datastore.info {id}: {e}")))
    }

    fn post(&self, body: &str) -> std::io::Result<String> {
        let addrs: Vec<_> = (self.host.as_str(), self.port).to_socket_addrs()?.collect();
        let mut last = None;
        let mut stream = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let mut stream = match stream {
            Some(s) => s,
            None => {
                return Err(last.unwrap_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
                }));
            }
        };
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let host = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: backstop\r\nContent-Type: text/xml\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.path,
            body.len()
        );
        if self.tls {
            let mut stream = self
                .tls_connector()?
                .connect(&self.host, stream)
                .map_err(|e| {
                    std::io::Error::other(format!("TLS with {}:{}: {e}", self.host, self.port))
                })?;
            exchange(&mut stream, &head, body)?;
            return read_http_response(BufReader::new(stream));
        }
        exchange(&mut stream, &head, body)?;
        read_http_response(BufReader::new(stream))
    }

    /// Verifies the server against the system's roots and those in `ONE_CERT_DIR`, and its
    /// name against the endpoint's host.
    fn tls_connector(&self) -> std::io::Result<openssl::ssl::SslConnector> {
        let tls = |e: openssl::error::ErrorStack| std::io::Error::other(format!("TLS: {e}"));
        let mut builder =
            openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client())
                .map_err(tls)?;
        if let Some(dir) = std::env::var_os("ONE_CERT_DIR").filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            let entries = std::fs::read_dir(&dir).map_err(|e| {
                std::io::Error::other(format!("cannot read ONE_CERT_DIR {}: {e}", dir.display()))
            })?;
            for entry in entries {
                let path = entry?.path();
                if !path.is_file() {
                    continue;
                }
                let pem = std::fs::read(&path)?;
                let certs = openssl::x509::X509::stack_from_pem(&pem).map_err(|e| {
                    std::io::Error::other(format!(
                        "{} in ONE_CERT_DIR is not a PEM certificate: {e}",
                        path.display()
                    ))
                })?;
                for cert in certs {
                    builder.cert_store_mut().add_cert(cert).map_err(tls)?;
                }
            }
        }
        Ok(builder.build())
    }
}

fn exchange(stream: &mut impl Write, head: &str, body: &str) -> std::io::Result<()> {
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// A server-cipher login (driver contract §9.3): the server user of `ONE_CIPHER_AUTH` (default
/// `/var/lib/one/.one/onegate_auth`, a `user:password` file) acting as `target_user` until
/// `expire` (seconds since the epoch). The result is a session string for [`OnedClient::call_as`].
pub fn server_cipher_session(target_user: &str, expire: i64) -> Result<String, Error> {
    let path = match std::env::var_os("ONE_CIPHER_AUTH").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(DEFAULT_CIPHER_AUTH),
    };
    let line = first_line(&path, "the server credentials file")?;
    let (user, password) = line.split_once(':').ok_or_else(|| {
        oned_error(format!(
            "the server credentials file {} does not hold user:password",
            path.display()
        ))
    })?;
    Ok(cipher_token(user, password, target_user, expire))
}

/// `srv_user:target_user:base64(AES-256-CBC("srv_user:target_user:expire"))`, the key being the
/// first 32 characters of the hex SHA-256 of the password and the IV its first 16.
pub fn cipher_token(user: &str, password: &str, target_user: &str, expire: i64) -> String {
    use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
    use base64::Engine;
    use sha2::Digest;
    let hex = hex::encode(sha2::Sha256::digest(password.as_bytes()));
    let key = &hex.as_bytes()[..32];
    let iv = &hex.as_bytes()[..16];
    let cipher = aes::Aes256::new(GenericArray::from_slice(key));
    let mut data = format!("{user}:{target_user}:{expire}").into_bytes();
    // PKCS#7 padding, then CBC.
    let pad = 16 - data.len() % 16;
    data.extend(std::iter::repeat_n(pad as u8, pad));
    let mut prev = [0u8; 16];
    prev.copy_from_slice(iv);
    for block in data.chunks_exact_mut(16) {
        for (b, p) in block.iter_mut().zip(prev.iter()) {
            *b ^= p;
        }
        let ga = GenericArray::from_mut_slice(block);
        cipher.encrypt_block(ga);
        prev.copy_from_slice(block);
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
    format!("{user}:{target_user}:{b64}")
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// Reads an HTTP/1.x response: the status must be 200; the body by Content-Length, chunked, or
/// up to the end of the connection.
fn read_http_response(mut r: impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line.trim_end().to_string();
    let code = status
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    if !status.starts_with("HTTP/1.") {
        return Err(invalid(format!("not an HTTP response: {status:?}")));
    }
    let mut length = None;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(invalid("the response ended inside its headers".into()));
        }
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| invalid(format!("bad Content-Length {value:?}")))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| invalid(format!("bad chunk size {:?}", line.trim())))?;
            if size == 0 {
                break;
            }
            if body.len() + size > MAX_BODY {
                return Err(invalid("the response is too large".into()));
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(invalid("the response is too large".into()));
        }
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.take(MAX_BODY as u64 + 1).read_to_end(&mut body)?;
        if body.len() > MAX_BODY {
            return Err(invalid("the response is too large".into()));
        }
    }
    if code != "200" {
        let text = String::from_utf8_lossy(&body);
        return Err(invalid(format!(
            "HTTP {code}{}",
            text.lines()
                .next()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!(": {}", l.trim()))
                .unwrap_or_default()
        )));
    }
    String::from_utf8(body).map_err(|_| invalid("the response is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_parsed() {
        let c = OnedClient::new("http://localhost:2633/RPC2", "u:p".into()).expect("parse");
        assert_eq!(
            (c.host.as_str(), c.port, c.path.as_str()),
            ("localhost", 2633, "/RPC2")
        );
        let c = OnedClient::new("http://[::1]:2633/RPC2", "u:p".into()).expect("parse");
        assert_eq!((c.host.as_str(), c.port), ("::1", 2633));
        let c = OnedClient::new("http://one.example", "u:p".into()).expect("parse");
        assert_eq!(
            (c.host.as_str(), c.port, c.path.as_str()),
            ("one.example", 80, "/RPC2")
        );
        let c = OnedClient::new("https://one.example/RPC2", "u:p".into()).expect("https");
        assert_eq!((c.host.as_str(), c.port, c.tls), ("one.example", 443, true));
        let e = OnedClient::new("ftp://one.example/RPC2", "u:p".into()).expect_err("ftp");
        assert!(e.to_string().contains("http:// or https://"), "{e}");
        assert!(OnedClient::new("ftp://x", "u:p".into()).is_err());
        assert!(OnedClient::new("http://x:port/", "u:p".into()).is_err());
        assert!(OnedClient::new("http://:2633/", "u:p".into()).is_err());
        assert!(!format!("{c:?}").contains("u:p"));
        let e = OnedClient::new("http://oneadmin:s3cret@one.example:2633/RPC2", "u:p".into())
            .expect_err("credentials in the URL");
        assert_eq!(
            e.to_string(),
            "ONE_XMLRPC endpoint \"http://oneadmin:***@one.example:2633/RPC2\" holds a user name \
             or password: the login comes from ONE_AUTH, never the URL"
        );
        let e = OnedClient::new("http://oneadmin:s3cret@one.example:port/", "u:p".into())
            .expect_err("bad port");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let c = OnedClient::new("http://one.example/RPC2?key=s3cret", "u:p".into()).expect("query");
        assert_eq!(c.path, "/RPC2?key=s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(c.endpoint(), "http://one.example/RPC2?***");
    }

    /// The token against the openssl command line (the reference implementation of the
    /// cipher oned's server_cipher driver uses).
    #[test]
    fn cipher_tokens_match_openssl() {
        use sha2::Digest;
        for (password, target, expire) in [
            ("serveradmin-secret", "oneadmin", 1_763_700_000i64),
            ("p:with:colons", "alice", 1),
            (
                "x",
                "a-user-name-long-enough-to-need-several-blocks",
                99_999_999_999,
            ),
        ] {
            let token = cipher_token("serveradmin", password, target, expire);
            let (prefix, b64) = token.rsplit_once(':').expect("token");
            assert_eq!(prefix, format!("serveradmin:{target}"));
            let hex = hex::encode(sha2::Sha256::digest(password.as_bytes()));
            let key_hex = hex::encode(&hex.as_bytes()[..32]);
            let iv_hex = hex::encode(&hex.as_bytes()[..16]);
            let mut child = std::process::Command::new("openssl")
                .args([
                    "enc",
                    "-aes-256-cbc",
                    "-base64",
                    "-A",
                    "-K",
                    &key_hex,
                    "-iv",
                    &iv_hex,
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("the openssl command is installed (.ci/run installs it)");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(format!("serveradmin:{target}:{expire}").as_bytes())
                .expect("write");
            let out = child.wait_with_output().expect("openssl");
            assert!(out.status.success());
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), b64);
        }
    }

    #[test]
    fn responses_by_length_chunks_and_close() {
        let by_len = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello trailing";
        assert_eq!(read_http_response(by_len.as_bytes()).expect("len"), "hello");
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n";
        assert_eq!(
            read_http_response(chunked.as_bytes()).expect("chunked"),
            "hello"
        );
        let close = "HTTP/1.0 200 OK\r\n\r\nhello";
        assert_eq!(
            read_http_response(close.as_bytes()).expect("close"),
            "hello"
        );
        let e = read_http_response(
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\n\r\nnope\r\n".as_bytes(),
        )
        .expect_err("401");
        assert_eq!(e.to_string(), "HTTP 401: nope");
        assert!(read_http_response("SSH-2.0-OpenSSH\r\n".as_bytes()).is_err());
        assert!(
            read_http_response("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort".as_bytes())
                .is_err()
        );
        assert!(
            read_http_response("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n".as_bytes()).is_err()
        );
    }
}
