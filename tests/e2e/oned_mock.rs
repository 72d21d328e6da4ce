//! A MOCK of oned's XML-RPC API: oned itself cannot run here, so the actions that call the API
//! (the downloader, restore) are tested against this recording server on 127.0.0.1. It speaks
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

pub struct MockOned {
    pub endpoint: String,
    pub calls: Arc<Mutex<Vec<Call>>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    thread: Option<JoinHandle<()>>,
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
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
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
        }
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
    }
}

fn serve(
    conn: TcpStream,
    accept: &Accept,
    handler: &Handler,
    calls: &Mutex<Vec<Call>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
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
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    conn.flush()
}
