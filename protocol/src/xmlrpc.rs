//! XML-RPC as oned's API speaks it: a `methodCall` body for a method and its parameters, and
//! the `methodResponse` read back into [`Value`]s.
//!
//! oned answers every call with one array `[success, result, error code, …]`: on success the
//! second element is the result (an id, an XML document), on failure it is the error text.
//! [`OnedReply`] reads that shape. A transport-level `fault` is reported as such.

use crate::xml::{Element, XmlError};
use std::fmt::Write as _;

/// One XML-RPC value.
#[derive(Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Bool(bool),
    Double(f64),
    Str(String),
    Array(Vec<Value>),
    Struct(Vec<(String, Value)>),
    Nil,
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Double(d) => write!(f, "{d}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Array(a) => f.debug_list().entries(a).finish(),
            Value::Struct(m) => f
                .debug_map()
                .entries(m.iter().map(|(k, v)| (k, v)))
                .finish(),
            Value::Nil => write!(f, "nil"),
        }
    }
}

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RpcError {
    #[error("the response is not XML: {0}")]
    Xml(#[from] XmlError),
    #[error("the response is not an XML-RPC methodResponse: {0}")]
    Shape(String),
    #[error("XML-RPC fault {code}: {message}")]
    Fault { code: i64, message: String },
}

fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

fn encode_value(v: &Value, out: &mut String) {
    out.push_str("<value>");
    match v {
        Value::Int(i) => {
            // oned's ids and flags are i4; larger numbers need i8.
            if i32::try_from(*i).is_ok() {
                let _ = write!(out, "<int>{i}</int>");
            } else {
                let _ = write!(out, "<i8>{i}</i8>");
            }
        }
        Value::Bool(b) => {
            let _ = write!(out, "<boolean>{}</boolean>", u8::from(*b));
        }
        Value::Double(d) => {
            let _ = write!(out, "<double>{d}</double>");
        }
        Value::Str(s) => {
            out.push_str("<string>");
            escape(s, out);
            out.push_str("</string>");
        }
        Value::Array(items) => {
            out.push_str("<array><data>");
            for item in items {
                encode_value(item, out);
            }
            out.push_str("</data></array>");
        }
        Value::Struct(members) => {
            out.push_str("<struct>");
            for (name, value) in members {
                out.push_str("<member><name>");
                escape(name, out);
                out.push_str("</name>");
                encode_value(value, out);
                out.push_str("</member>");
            }
            out.push_str("</struct>");
        }
        Value::Nil => out.push_str("<nil/>"),
    }
    out.push_str("</value>");
}

/// The body of a call.
pub fn method_call(method: &str, params: &[Value]) -> String {
    let mut out = String::from("<?xml version=\"1.0\"?>\n<methodCall><methodName>");
    escape(method, &mut out);
    out.push_str("</methodName><params>");
    for p in params {
        out.push_str("<param>");
        encode_value(p, &mut out);
        out.push_str("</param>");
    }
    out.push_str("</params></methodCall>\n");
    out
}

fn shape(what: impl Into<String>) -> RpcError {
    RpcError::Shape(what.into())
}

fn decode_value(value: &Element) -> Result<Value, RpcError> {
    let Some(typed) = value.children.first() else {
        // An untyped <value> is a string.
        return Ok(Value::Str(value.text.clone()));
    };
    let number = |t: &str| {
        t.trim()
            .parse::<i64>()
            .map_err(|_| shape(format!("<{}> holds {t:?}", typed.name)))
    };
    Ok(match typed.name.as_str() {
        "int" | "i4" | "i8" => Value::Int(number(&typed.text)?),
        "boolean" => match typed.text.trim() {
            "1" => Value::Bool(true),
            "0" => Value::Bool(false),
            t => return Err(shape(format!("<boolean> holds {t:?}"))),
        },
        "double" => Value::Double(
            typed
                .text
                .trim()
                .parse()
                .map_err(|_| shape(format!("<double> holds {:?}", typed.text)))?,
        ),
        "string" => Value::Str(typed.text.clone()),
        "nil" => Value::Nil,
        "array" => {
            let data = typed
                .child("data")
                .ok_or_else(|| shape("<array> has no <data>"))?;
            Value::Array(
                data.children_named("value")
                    .map(decode_value)
                    .collect::<Result<_, _>>()?,
            )
        }
        "struct" => Value::Struct(
            typed
                .children_named("member")
                .map(|m| {
                    let name = m
                        .child("name")
                        .ok_or_else(|| shape("a <member> has no <name>"))?
                        .text
                        .clone();
                    let v = m
                        .child("value")
                        .ok_or_else(|| shape("a <member> has no <value>"))?;
                    Ok((name, decode_value(v)?))
                })
                .collect::<Result<_, RpcError>>()?,
        ),
        other => return Err(shape(format!("unknown value type <{other}>"))),
    })
}

/// The values of a `methodResponse`, or its fault.
pub fn parse_response(body: &str) -> Result<Vec<Value>, RpcError> {
    let root = Element::parse(body)?;
    if root.name != "methodResponse" {
        return Err(shape(format!("the root is <{}>", root.name)));
    }
    if let Some(fault) = root.child("fault") {
        let v = fault
            .child("value")
            .ok_or_else(|| shape("<fault> has no <value>"))
            .and_then(decode_value)?;
        let member = |name: &str| match &v {
            Value::Struct(m) => m.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
            _ => None,
        };
        return Err(RpcError::Fault {
            code: match member("faultCode") {
                Some(Value::Int(c)) => c,
                _ => 0,
            },
            message: match member("faultString") {
                Some(Value::Str(s)) => s,
                _ => format!("{v:?}"),
            },
        });
    }
    let params = root
        .child("params")
        .ok_or_else(|| shape("no <params> and no <fault>"))?;
    params
        .children_named("param")
        .map(|p| {
            p.child("value")
                .ok_or_else(|| shape("a <param> has no <value>"))
                .and_then(decode_value)
        })
        .collect()
}

/// The method and parameters of a `methodCall` (what a server reads).
pub fn parse_call(body: &str) -> Result<(String, Vec<Value>), RpcError> {
    let root = Element::parse(body)?;
    if root.name != "methodCall" {
        return Err(shape(format!("the root is <{}>", root.name)));
    }
    let method = root
        .child("methodName")
        .ok_or_else(|| shape("no <methodName>"))?
        .text
        .trim()
        .to_string();
    let params = match root.child("params") {
        Some(p) => p
            .children_named("param")
            .map(|p| {
                p.child("value")
                    .ok_or_else(|| shape("a <param> has no <value>"))
                    .and_then(decode_value)
            })
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok((method, params))
}

/// The body of a successful response (what a server writes).
pub fn method_response(values: &[Value]) -> String {
    let mut out = String::from("<?xml version=\"1.0\"?>\n<methodResponse><params>");
    for v in values {
        out.push_str("<param>");
        encode_value(v, &mut out);
        out.push_str("</param>");
    }
    out.push_str("</params></methodResponse>\n");
    out
}

/// oned's answer to one call.
#[derive(Debug, Clone, PartialEq)]
pub enum OnedReply {
    /// The call succeeded; the result (an id or an XML document).
    Ok(Value),
    /// oned refused; its message and error code.
    Failed { message: String, code: i64 },
}

/// Reads oned's `[success, result|message, code, …]` array.
pub fn oned_reply(values: &[Value]) -> Result<OnedReply, RpcError> {
    let Some(Value::Array(items)) = values.first() else {
        return Err(shape("the result is not an array"));
    };
    match items.as_slice() {
        [Value::Bool(true), result, ..] => Ok(OnedReply::Ok(result.clone())),
        [Value::Bool(false), message, rest @ ..] => Ok(OnedReply::Failed {
            message: match message {
                Value::Str(s) => s.trim().to_string(),
                other => format!("{other:?}"),
            },
            code: match rest.first() {
                Some(Value::Int(c)) => *c,
                _ => -1,
            },
        }),
        _ => Err(shape("the result array does not start with a boolean")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_escapes_its_strings() {
        let body = method_call(
            "one.datastore.info",
            &[
                Value::Str("oneadmin:p<&>'\"".into()),
                Value::Int(100),
                Value::Bool(true),
                Value::Int(1 << 40),
            ],
        );
        assert!(body.contains("<methodName>one.datastore.info</methodName>"));
        assert!(body.contains("<string>oneadmin:p&lt;&amp;&gt;&apos;&quot;</string>"));
        assert!(body.contains("<int>100</int>"));
        assert!(body.contains("<boolean>1</boolean>"));
        assert!(body.contains("<i8>1099511627776</i8>"));
        // What the call encodes, a server decodes, and what it answers, the client reads.
        let (method, params) = parse_call(&body).expect("parse call");
        assert_eq!(method, "one.datastore.info");
        let back = parse_response(&method_response(&params)).expect("round trip");
        assert_eq!(
            back,
            vec![
                Value::Str("oneadmin:p<&>'\"".into()),
                Value::Int(100),
                Value::Bool(true),
                Value::Int(1 << 40),
            ]
        );
    }

    #[test]
    fn oned_success_and_failure_are_read() {
        let ok = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n<methodResponse>\r\n<params>\r\n\
                  <param><value><array><data>\r\n<value><boolean>1</boolean></value>\r\n\
                  <value><string>&lt;DATASTORE&gt;&lt;ID&gt;100&lt;/ID&gt;&lt;/DATASTORE&gt;</string></value>\r\n\
                  <value><i4>0</i4></value>\r\n<value><i4>-1</i4></value>\r\n</data></array></value></param>\r\n\
                  </params>\r\n</methodResponse>\r\n";
        let v = parse_response(ok).expect("parse");
        assert_eq!(
            oned_reply(&v),
            Ok(OnedReply::Ok(Value::Str(
                "<DATASTORE><ID>100</ID></DATASTORE>".into()
            )))
        );
        let failed = "<methodResponse><params><param><value><array><data>\
                      <value><boolean>0</boolean></value>\
                      <value><string>[one.datastore.info] User couldn't be authenticated, aborting call.</string></value>\
                      <value><i4>256</i4></value></data></array></value></param></params></methodResponse>";
        let v = parse_response(failed).expect("parse");
        assert_eq!(
            oned_reply(&v),
            Ok(OnedReply::Failed {
                message: "[one.datastore.info] User couldn't be authenticated, aborting call."
                    .into(),
                code: 256
            })
        );
        // An untyped value is a string; a struct is read member by member.
        let v = parse_response(
            "<methodResponse><params><param><value>plain</value></param>\
             <param><value><struct><member><name>a</name><value><int>1</int></value></member></struct></value></param>\
             </params></methodResponse>",
        )
        .expect("parse");
        assert_eq!(
            v,
            vec![
                Value::Str("plain".into()),
                Value::Struct(vec![("a".into(), Value::Int(1))])
            ]
        );
    }

    #[test]
    fn faults_and_garbage_are_errors_not_panics() {
        let fault = "<methodResponse><fault><value><struct>\
                     <member><name>faultCode</name><value><int>-501</int></value></member>\
                     <member><name>faultString</name><value><string>No such method</string></value></member>\
                     </struct></value></fault></methodResponse>";
        assert_eq!(
            parse_response(fault),
            Err(RpcError::Fault {
                code: -501,
                message: "No such method".into()
            })
        );
        for bad in [
            "",
            "<html>502 Bad Gateway</html>",
            "<methodResponse></methodResponse>",
            "<methodResponse><params><param><value><int>x</int></value></param></params></methodResponse>",
            "<methodResponse><params><param><value><array></array></value></param></params></methodResponse>",
            "<methodResponse><params><param><value><blob/></value></param></params></methodResponse>",
        ] {
            assert!(parse_response(bad).is_err(), "{bad}");
        }
        assert!(oned_reply(&[Value::Int(1)]).is_err());
        assert!(oned_reply(&[Value::Array(vec![Value::Str("x".into())])]).is_err());
    }
}
