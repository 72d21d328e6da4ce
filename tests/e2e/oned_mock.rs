//! A MOCK of oned's XML-RPC API, for what the real oned (oned_real.rs) cannot be made to show:
//! answers and faults chosen call by call, and a record of every call the actions (the
//! downloader, restore) make, on 127.0.0.1. It speaks
//! HTTP/1.1 and XML-RPC as oned does, checks the session string, answers from a table of
//! canned documents and records every call. Tests that use it say "mock oned" in their name.

use backstop_protocol::xmlrpc::{self, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One recorded call: the method and its parameters after the session.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: String,
    pub session: String,
    pub params: Vec<Value>,
}

type Handler = dyn Fn(&str, &[Value]) -> Value + Send + Sync;
type Accept = dyn Fn(&str) -> bool + Send + Sync;

type TlsFront = (
    String,
    std::path::PathBuf,
    std::net::SocketAddr,
    JoinHandle<()>,
);

pub struct MockOned {
    pub endpoint: String,
    pub calls: Arc<Mutex<Vec<Call>>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    thread: Option<JoinHandle<()>>,
    accept: Arc<Accept>,
    handler: Arc<Handler>,
    /// The same API over TLS, when started: its endpoint, the directory holding its private
    /// CA's certificate (for ONE_CERT_DIR), its address and thread.
    tls: Mutex<Option<TlsFront>>,
}

/// oned's success reply.
pub fn ok(v: Value) -> Value {
    Value::Array(vec![Value::Bool(true), v, Value::Int(0)])
}

/// oned's failure reply.
pub fn failed(message: &str, code: i64) -> Value {
    Value::Array(vec![
        Value::Bool(false),
        Value::Str(message.into()),
        Value::Int(code),
    ])
}

impl MockOned {
    /// Serves on an ephemeral port of 127.0.0.1; `accept` says which session strings log in.
    pub fn start(
        accept: impl Fn(&str) -> bool + Send + Sync + 'static,
        handler: impl Fn(&str, &[Value]) -> Value + Send + Sync + 'static,
    ) -> MockOned {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind mock oned");
        let addr = listener.local_addr().expect("addr");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let accept: Arc<Accept> = Arc::new(accept);
        let thread = {
            let calls = calls.clone();
            let stop = stop.clone();
            let (accept, handler) = (accept.clone(), handler.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(30)));
                    let _ = serve(conn, &*accept, &*handler, &calls);
                }
            })
        };
        MockOned {
            endpoint: format!("http://{addr}/RPC2"),
            calls,
            stop,
            addr,
            thread: Some(thread),
            accept,
            handler,
            tls: Mutex::new(None),
        }
    }

    /// Serves the same API over TLS too, on another port of 127.0.0.1, with a certificate of a
    /// private CA made in `dir` (openssl); returns the https endpoint and the directory that
    /// holds the CA's certificate alone.
    pub fn serve_tls(&self, dir: &std::path::Path) -> (String, std::path::PathBuf) {
        use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};
        let (ca, cert, key) = crate::s3server::make_tls(dir);
        let ca_dir = dir.join("oned-ca");
        std::fs::create_dir_all(&ca_dir).expect("ca dir");
        std::fs::copy(&ca, ca_dir.join("ca.pem")).expect("ca");
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("acceptor");
        b.set_private_key_file(&key, SslFiletype::PEM).expect("key");
        b.set_certificate_chain_file(&cert).expect("cert");
        let acceptor = b.build();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind tls mock oned");
        let addr = listener.local_addr().expect("addr");
        let (calls, stop) = (self.calls.clone(), self.stop.clone());
        let (accept, handler) = (self.accept.clone(), self.handler.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(30)));
                // A client that refuses the certificate ends the handshake: nothing to serve.
                if let Ok(tls) = acceptor.accept(conn) {
                    let _ = serve(tls, &*accept, &*handler, &calls);
                }
            }
        });
        let endpoint = format!("https://{addr}/RPC2");
        *self.tls.lock().expect("tls") = Some((endpoint.clone(), ca_dir.clone(), addr, thread));
        (endpoint, ca_dir)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }
}

impl Drop for MockOned {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some((_, _, addr, t)) = self.tls.lock().ok().and_then(|mut t| t.take()) {
            let _ = TcpStream::connect(addr);
            let _ = t.join();
        }
    }
}

fn serve(
    conn: impl Read + Write,
    accept: &Accept,
    handler: &Handler,
    calls: &Mutex<Vec<Call>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut length = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body);
    let reply = match xmlrpc::parse_call(&body) {
        Ok((method, params)) => {
            let (given, rest) = match params.split_first() {
                Some((Value::Str(s), rest)) => (s.clone(), rest.to_vec()),
                _ => (String::new(), params.clone()),
            };
            calls.lock().expect("calls").push(Call {
                method: method.clone(),
                session: given.clone(),
                params: rest.clone(),
            });
            if !accept(&given) {
                failed(
                    &format!("[{method}] User couldn't be authenticated, aborting call."),
                    256,
                )
            } else {
                handler(&method, &rest)
            }
        }
        Err(e) => failed(&format!("bad call: {e}"), 1),
    };
    let text = xmlrpc::method_response(&[reply]);
    let conn = reader.get_mut();
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    conn.flush()
}
