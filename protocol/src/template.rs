//! OpenNebula templates: the ordered attribute lists of a `TEMPLATE` element and of the text
//! files `onedatastore create` and `onebackupjob create` read.
//!
//! The text syntax follows oned's own lexer (`src/parsers/template_parser.l`,
//! `template_syntax.y`), so a template that oned accepts reads the same here:
//! - a name is `[A-Za-z0-9_]+` and is upper-cased, at the top level and inside vectors;
//! - `NAME = "value"`: a quoted value may span lines; `\"` is the only escape, every other
//!   backslash stays as written (`"C:\dir"` is `C:\dir`). oned's lexer takes the longest
//!   match, so a quote that follows a backslash ends the value only when no unescaped quote
//!   comes later (`"x\"` then more text runs on to the next bare quote);
//! - `NAME = value`: an unquoted value runs to the next blank, newline, `=`, `#`, `,`, `[` or `]`;
//!   `\"` in it reads as `"` too (oned unescapes every value);
//! - a value whose line holds `]]>` is refused, as oned refuses it (its CDATA rule);
//! - `NAME =` at the end of a line is an empty value;
//! - `NAME = [ A = "x", B = y ]`: a vector; its pairs are separated by commas and may span lines;
//! - a name may repeat (`DISK = [...]` twice is two disks); order is kept;
//! - `#` starts a comment that runs to the end of the line.
//!
//! Errors carry the line and column (both from 1) where the problem starts.

use serde::Serialize;
use std::fmt;

/// A value: a single string or a vector of `KEY = value` pairs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Single(String),
    Vector(Vec<(String, String)>),
}

/// One attribute of a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attribute {
    pub name: String,
    pub value: Value,
}

/// An ordered list of attributes; names may repeat. Unknown attributes are kept as they are.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct Template {
    pub attributes: Vec<Attribute>,
}

/// A syntax error in a template file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct TemplateError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Attribute names whose values are secrets: never printed, logged or put in an error.
pub const SECRET_ATTRIBUTES: &[&str] = &[
    "RESTIC_PASSWORD",
    "RESTIC_S3_SECRET_ACCESS_KEY",
    "RESTIC_S3_ACCESS_KEY_ID",
    "RESTIC_S3_MAINTENANCE_SECRET_ACCESS_KEY",
    "RESTIC_S3_MAINTENANCE_ACCESS_KEY_ID",
    "PASSWORD",
];

/// Whether an attribute's value must be hidden from output.
pub fn is_secret(name: &str) -> bool {
    SECRET_ATTRIBUTES
        .iter()
        .any(|s| s.eq_ignore_ascii_case(name))
}

/// Whether an attribute holds a webhook's URL (`NOTIFY_WEBHOOK`), a secret beyond its host.
pub fn is_webhook(name: &str) -> bool {
    name.to_ascii_uppercase().contains("WEBHOOK")
}

impl Template {
    /// Parses the text form.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        Parser::new(text).template().map(|(t, _)| t)
    }

    /// Parses the text form and also returns the line (from 1) each attribute starts on,
    /// so a later check of a value can name where it was written.
    pub fn parse_with_lines(text: &str) -> Result<(Template, Vec<usize>), TemplateError> {
        Parser::new(text).template()
    }

    /// The first single value of `name` (case-insensitive), as written.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find_map(|a| match &a.value {
            Value::Single(v) if a.name.eq_ignore_ascii_case(name) => Some(v.as_str()),
            _ => None,
        })
    }

    /// Every vector value of `name`, in order.
    pub fn vectors<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a [(String, String)]> + 'a {
        self.attributes.iter().filter_map(move |a| match &a.value {
            Value::Vector(pairs) if a.name.eq_ignore_ascii_case(name) => Some(pairs.as_slice()),
            _ => None,
        })
    }

    /// Appends a single attribute.
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.attributes.push(Attribute {
            name: name.to_ascii_uppercase(),
            value: Value::Single(value.into()),
        });
    }

    /// A copy for display: every secret value replaced by `********`, a webhook's URL cut to
    /// `scheme://host[:port]`, and in every other value each URL's password, query and
    /// fragment hidden ([`crate::redact`]).
    pub fn redacted(&self) -> Template {
        let hide = |name: &str, v: &str| {
            if is_secret(name) {
                "********".to_string()
            } else if is_webhook(name) {
                crate::redact::webhook(v)
            } else {
                crate::redact::text(v)
            }
        };
        Template {
            attributes: self
                .attributes
                .iter()
                .map(|a| Attribute {
                    name: a.name.clone(),
                    value: match &a.value {
                        Value::Single(v) => Value::Single(hide(&a.name, v)),
                        Value::Vector(pairs) => Value::Vector(
                            pairs.iter().map(|(k, v)| (k.clone(), hide(k, v))).collect(),
                        ),
                    },
                })
                .collect(),
        }
    }
}

/// Look up a key inside a vector's pairs (case-insensitive).
pub fn vector_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// Why a template cannot be written so that oned reads it back exactly as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("attribute {attribute}: {problem}")]
pub struct UnwritableTemplate {
    pub attribute: String,
    pub problem: String,
}

/// Whether a name can be written: oned reads `[A-Za-z0-9_]+` (and upper-cases it).
fn writable_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(is_name_char)
}

/// A value as oned's lexer reads it back unchanged, or why there is no such form.
///
/// - Quoted, with every `"` written `\"`: oned unescapes exactly those pairs. The closing
///   quote must not follow a backslash (oned's longest match would run past it), so a value
///   that ends in `\` is written unquoted when it is a single token without `\"`.
/// - Never: NUL and other control characters but tab, newline and carriage return (C strings,
///   XML), and `]]>` (oned's lexer refuses a line that holds it).
pub fn write_value(value: &str) -> Result<String, UnwritableValue> {
    if let Some(c) = value
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(UnwritableValue::Control(c));
    }
    if value.contains("]]>") {
        return Err(UnwritableValue::CdataEnd);
    }
    if !value.ends_with('\\') {
        return Ok(format!("\"{}\"", value.replace('"', "\\\"")));
    }
    let token = !value.starts_with('"')
        && !value.contains("\\\"")
        && !value.chars().any(|c| ends_unquoted(c) || c == '\r');
    if token {
        return Ok(value.to_string());
    }
    Err(UnwritableValue::TrailingBackslash)
}

/// Why a value has no form oned reads back unchanged ([`write_value`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnwritableValue {
    #[error("the value holds the control character {0:?}")]
    Control(char),
    #[error("the value holds \"]]>\", which oned's template parser refuses")]
    CdataEnd,
    #[error(
        "the value ends in a backslash and holds a blank, quote or separator, so oned cannot read it back"
    )]
    TrailingBackslash,
}

impl Template {
    /// The text form, one attribute per line, that oned (and [`Template::parse`]) reads back
    /// exactly as this template is; an error names the first attribute that has none.
    pub fn render(&self) -> Result<String, UnwritableTemplate> {
        let mut out = String::new();
        self.write_to(&mut out, &mut |name, v| {
            write_value(v).map_err(|problem| UnwritableTemplate {
                attribute: name.to_string(),
                problem: problem.to_string(),
            })
        })?;
        Ok(out)
    }

    fn write_to<E>(
        &self,
        out: &mut String,
        value: &mut dyn FnMut(&str, &str) -> Result<String, E>,
    ) -> Result<(), E>
    where
        E: From<UnwritableTemplate>,
    {
        let name_ok = |name: &str| {
            if writable_name(name) {
                Ok(name.to_ascii_uppercase())
            } else {
                Err(UnwritableTemplate {
                    attribute: name.to_string(),
                    problem: "the name is not letters, digits and '_'".into(),
                })
            }
        };
        for a in &self.attributes {
            let name = name_ok(&a.name)?;
            match &a.value {
                Value::Single(v) => {
                    out.push_str(&format!("{name} = {}\n", value(&name, v)?));
                }
                Value::Vector(pairs) => {
                    out.push_str(&format!("{name} = ["));
                    for (i, (k, v)) in pairs.iter().enumerate() {
                        let key = name_ok(k)?;
                        let sep = if i == 0 { "\n  " } else { ",\n  " };
                        let v = value(&format!("{name}/{key}"), v)?;
                        out.push_str(&format!("{sep}{key} = {v}"));
                    }
                    out.push_str(" ]\n");
                }
            }
        }
        Ok(())
    }
}

/// The text form for people to read (`decode`, `show`): as [`Template::render`] writes it,
/// with a value that has no exact form shown in Rust's escaped notation instead. Text meant
/// for oned or for [`Template::parse`] comes from [`Template::render`].
impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let shown = self.write_to::<UnwritableTemplate>(&mut out, &mut |_, v| {
            Ok(write_value(v).unwrap_or_else(|_| format!("{v:?}")))
        });
        match shown {
            Ok(()) => f.write_str(&out),
            Err(e) => write!(f, "{out}# {e}"),
        }
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    column: usize,
}

#[derive(Clone, Copy)]
struct Mark {
    line: usize,
    column: usize,
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t' || c == '\r'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn ends_unquoted(c: char) -> bool {
    is_blank(c) || matches!(c, '\n' | '=' | '#' | ',' | '[' | ']')
}

fn describe(c: Option<char>) -> String {
    match c {
        None => "the end of the file".into(),
        Some('\n') => "the end of the line".into(),
        Some(c) => format!("'{}'", c.escape_default()),
    }
}

impl Parser {
    fn new(text: &str) -> Self {
        Parser {
            chars: text.chars().collect(),
            pos: 0,
            line: 1,
            column: 1,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn mark(&self) -> Mark {
        Mark {
            line: self.line,
            column: self.column,
        }
    }

    fn error_at(&self, mark: Mark, message: String) -> TemplateError {
        TemplateError {
            line: mark.line,
            column: mark.column,
            message,
        }
    }

    fn error(&self, message: String) -> TemplateError {
        self.error_at(self.mark(), message)
    }

    fn skip_blanks(&mut self) {
        while self.peek().is_some_and(is_blank) {
            self.bump();
        }
    }

    /// Skips blanks, newlines and comments.
    fn skip_space(&mut self) {
        loop {
            match self.peek() {
                Some(c) if is_blank(c) || c == '\n' => {
                    self.bump();
                }
                Some('#') => {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                }
                _ => return,
            }
        }
    }

    fn template(mut self) -> Result<(Template, Vec<usize>), TemplateError> {
        let mut template = Template::default();
        let mut lines = Vec::new();
        loop {
            self.skip_space();
            if self.peek().is_none() {
                return Ok((template, lines));
            }
            lines.push(self.line);
            template.attributes.push(self.attribute()?);
        }
    }

    fn name(&mut self, what: &str) -> Result<String, TemplateError> {
        let mut name = String::new();
        while let Some(c) = self.peek().filter(|c| is_name_char(*c)) {
            name.push(c.to_ascii_uppercase());
            self.bump();
        }
        if name.is_empty() {
            return Err(self.error(format!(
                "expected {what} (letters, digits, '_'), found {}",
                describe(self.peek())
            )));
        }
        Ok(name)
    }

    fn equals(&mut self, name: &str) -> Result<(), TemplateError> {
        self.skip_blanks();
        if self.peek() != Some('=') {
            return Err(self.error(format!(
                "expected '=' after {name}, found {}",
                describe(self.peek())
            )));
        }
        self.bump();
        self.skip_blanks();
        Ok(())
    }

    fn attribute(&mut self) -> Result<Attribute, TemplateError> {
        let name = self.name("an attribute name")?;
        self.equals(&name)?;
        let value = match self.peek() {
            None | Some('\n') | Some('#') => Value::Single(String::new()),
            Some('[') => {
                let open = self.mark();
                self.bump();
                Value::Vector(self.vector(&name, open)?)
            }
            Some(_) => Value::Single(self.value(&name)?),
        };
        Ok(Attribute { name, value })
    }

    fn vector(&mut self, name: &str, open: Mark) -> Result<Vec<(String, String)>, TemplateError> {
        let unclosed =
            |p: &Self| p.error_at(open, format!("vector {name} is not closed (missing ']')"));
        let mut pairs = Vec::new();
        self.skip_space();
        if self.peek() == Some(']') {
            self.bump();
            return Ok(pairs);
        }
        loop {
            self.skip_space();
            if self.peek().is_none() {
                return Err(unclosed(self));
            }
            let key = self.name(&format!("a key inside vector {name}"))?;
            self.equals(&format!("{name}/{key}"))?;
            if self.peek().is_none() {
                return Err(unclosed(self));
            }
            let value = self.value(&format!("{name}/{key}"))?;
            pairs.push((key, value));
            self.skip_space();
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some(']') => {
                    self.bump();
                    return Ok(pairs);
                }
                None => return Err(unclosed(self)),
                other => {
                    return Err(self.error(format!(
                        "expected ',' or ']' in vector {name}, found {}",
                        describe(other)
                    )));
                }
            }
        }
    }

    /// Where the quoted value opened at `self.pos` ends, as oned's lexer (flex, longest
    /// match of `"([^"]|\\")*"`) decides: at the first quote not preceded by a backslash, or,
    /// when there is none, at the last quote that is.
    fn closing_quote(&self) -> Option<usize> {
        let mut last = None;
        for i in self.pos + 1..self.chars.len() {
            if self.chars[i] == '"' {
                if self.chars[i - 1] != '\\' {
                    return Some(i);
                }
                last = Some(i);
            }
        }
        last
    }

    fn value(&mut self, name: &str) -> Result<String, TemplateError> {
        let line_end = self.chars[self.pos..]
            .iter()
            .position(|c| *c == '\n')
            .map_or(self.chars.len(), |n| self.pos + n);
        let rest_of_line: String = self.chars[self.pos..line_end].iter().collect();
        if rest_of_line.contains("]]>") {
            return Err(self.error(format!(
                "the value of {name} holds \"]]>\", which oned refuses"
            )));
        }
        // The unquoted form, as long as it goes; oned takes it over a quoted value that ends
        // sooner (`"x"y` is the value `"x"y`).
        let token = self.chars[self.pos..]
            .iter()
            .take_while(|c| !ends_unquoted(**c))
            .count();
        if self.peek() == Some('"') {
            // oned would take an unclosed quote as part of a bare value; that is almost always
            // a typing mistake, so it is refused here.
            let Some(close) = self.closing_quote() else {
                return Err(self.error(format!(
                    "the quoted value of {name} is not closed (missing '\"')"
                )));
            };
            if close + 1 - self.pos >= token {
                self.bump();
                let mut text = String::new();
                while self.pos < close {
                    text.extend(self.bump());
                }
                self.bump();
                return Ok(unescape(&text));
            }
        }
        let mut value = String::new();
        while let Some(c) = self.peek().filter(|c| !ends_unquoted(*c)) {
            value.push(c);
            self.bump();
        }
        if value.is_empty() {
            return Err(self.error(format!(
                "expected a value for {name}, found {}",
                describe(self.peek())
            )));
        }
        Ok(unescape(&value))
    }
}

/// oned's unescape: every `\"` becomes `"`, left to right.
fn unescape(text: &str) -> String {
    text.replace("\\\"", "\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(name: &str, v: &str) -> Attribute {
        Attribute {
            name: name.into(),
            value: Value::Single(v.into()),
        }
    }

    #[test]
    fn reads_the_forms_oned_accepts() {
        let text = r#"
# a backup datastore
NAME   = "backups"      # trailing comment
type = BACKUP_DS
DS_MAD="backstop"
EMPTY =
QUOTE = "say \"hi\" C:\dir"
MULTI = "line one
line two"
DISK = [ IMAGE = "a", size = 1024 ]
DISK = [
  IMAGE = b,
  # a comment inside
  TARGET = "vdb"
]
NONE = [ ]
A = 1 B = 2
"#;
        let t = Template::parse(text).expect("parses");
        let expected = vec![
            single("NAME", "backups"),
            single("TYPE", "BACKUP_DS"),
            single("DS_MAD", "backstop"),
            single("EMPTY", ""),
            single("QUOTE", "say \"hi\" C:\\dir"),
            single("MULTI", "line one\nline two"),
            Attribute {
                name: "DISK".into(),
                value: Value::Vector(vec![
                    ("IMAGE".into(), "a".into()),
                    ("SIZE".into(), "1024".into()),
                ]),
            },
            Attribute {
                name: "DISK".into(),
                value: Value::Vector(vec![
                    ("IMAGE".into(), "b".into()),
                    ("TARGET".into(), "vdb".into()),
                ]),
            },
            Attribute {
                name: "NONE".into(),
                value: Value::Vector(vec![]),
            },
            single("A", "1"),
            single("B", "2"),
        ];
        assert_eq!(t.attributes, expected);
        assert_eq!(t.get("ds_mad"), Some("backstop"));
        assert_eq!(t.vectors("DISK").count(), 2);
    }

    #[test]
    fn attributes_know_their_line() {
        let (t, lines) = Template::parse_with_lines(
            "# c\nA = 1\n\nB = \"two\nlines\"\nC = [ X = 1,\n Y = 2 ]\n  D = 4",
        )
        .expect("parse");
        assert_eq!(t.attributes.len(), 4);
        assert_eq!(lines, [2, 4, 6, 8]);
    }

    #[test]
    fn errors_name_line_and_column() {
        let cases: &[(&str, &str)] = &[
            (
                "NAME = \"x\"\nDISK = [ IMAGE = \"a\",\n  SIZE = 1\n",
                "line 2, column 8: vector DISK is not closed (missing ']')",
            ),
            (
                "A = \"open\nB = 2\n",
                "line 1, column 5: the quoted value of A is not closed (missing '\"')",
            ),
            ("A 1\n", "line 1, column 3: expected '=' after A, found '1'"),
            (
                "= 1\n",
                "line 1, column 1: expected an attribute name (letters, digits, '_'), found '='",
            ),
            (
                "D = [ A = 1 B = 2 ]",
                "line 1, column 13: expected ',' or ']' in vector D, found 'B'",
            ),
            (
                "D = [ A = , B = 2 ]",
                "line 1, column 11: expected a value for D/A, found ','",
            ),
            (
                "D = [ A = 1, ]",
                "line 1, column 14: expected a key inside vector D (letters, digits, '_'), found ']'",
            ),
            (
                "X = ]",
                "line 1, column 5: expected a value for X, found ']'",
            ),
        ];
        for (text, expected) in cases {
            let e = Template::parse(text).expect_err(text);
            assert_eq!(&e.to_string(), expected, "for {text:?}");
        }
    }

    #[test]
    fn writes_what_it_reads() {
        let t = Template::parse("A = \"x \\\"y\\\"\"\nV = [ K = \"1\", L = \"two words\" ]\n")
            .expect("parses");
        let again = Template::parse(&t.to_string()).expect("reparses");
        assert_eq!(t, again);
    }

    #[test]
    fn reads_quotes_as_onedslexer_does() {
        // A quote after a backslash ends a value only when no bare quote follows: the longest
        // match. This is how a value ending in a backslash, written naively, swallows the
        // next line.
        let naive = "A = \"x\\\"\nB = \"\nEMULATOR = /evil\n";
        let t = Template::parse(naive).expect("parses");
        assert_eq!(t.get("A"), Some("x\"\nB = "));
        assert_eq!(t.get("EMULATOR"), Some("/evil"));
        let t = Template::parse("A = \"x\\\"\n").expect("parses");
        assert_eq!(t.get("A"), Some("x\\"));
        // A bare value is unescaped too, and a quoted one followed by more of a token is a
        // bare value.
        let t = Template::parse("A = a\\\"b\nB = \"x\"y\n").expect("parses");
        assert_eq!(t.get("A"), Some("a\"b"));
        assert_eq!(t.get("B"), Some("\"x\"y"));
        let e = Template::parse("A = \"x]]>\"\n").expect_err("cdata");
        assert!(e.to_string().contains("]]>"), "{e}");
    }

    #[test]
    fn writes_every_value_so_that_it_reads_back_or_refuses_it() {
        let ok = [
            "",
            "x\\",
            "C:\\dir\\",
            "a\\\"b",
            "say \"hi\"",
            "two\nlines",
            "=#,[]",
            "x\\\"",
            "\\",
        ];
        for v in ok {
            let mut t = Template::default();
            t.push("A", v);
            t.attributes.push(Attribute {
                name: "V".into(),
                value: Value::Vector(vec![("K".into(), v.into()), ("L".into(), "z".into())]),
            });
            let text = t.render().unwrap_or_else(|e| panic!("{v:?}: {e}"));
            assert_eq!(
                Template::parse(&text).expect("parses"),
                t,
                "{v:?} as {text}"
            );
        }
        for (v, why) in [
            ("x \\", "backslash"),
            ("a,b\\", "backslash"),
            ("\"x\\", "backslash"),
            ("]]>", "]]>"),
            ("nul\0", "control"),
            ("bell\u{7}", "control"),
        ] {
            let mut t = Template::default();
            t.push("A", v);
            let e = t.render().expect_err(v);
            assert!(e.to_string().starts_with("attribute A: "), "{e}");
            assert!(e.to_string().contains(why), "{v:?}: {e}");
        }
        let bad_name = Template {
            attributes: vec![single("A-B", "x")],
        };
        assert!(bad_name.render().is_err());
    }

    #[test]
    fn redacts_secrets() {
        let t = Template::parse("RESTIC_PASSWORD = s3cret\nX = [ PASSWORD = p ]\nN = 1")
            .expect("parses");
        let shown = t.redacted().to_string();
        assert!(
            !shown.contains("s3cret") && !shown.contains("= \"p\""),
            "{shown}"
        );
        assert!(shown.contains("N = \"1\""));
        let t = Template::parse(
            "NOTIFY_WEBHOOK = \"https://hooks.example/T0k3n\"\nONE = \"http://u:pw@oned:2633/RPC2\"\n\
             NOTE = \"see https://h/x?token=abc\"\nV = [ HOOK_WEBHOOK = \"https://h/T0k3n\" ]",
        )
        .expect("parses");
        let shown = t.redacted().to_string();
        for secret in ["T0k3n", "pw@", "abc"] {
            assert!(!shown.contains(secret), "{secret}: {shown}");
        }
        for kept in [
            "\"https://hooks.example/***\"",
            "\"http://u:***@oned:2633/RPC2\"",
            "\"see https://h/x?***\"",
        ] {
            assert!(shown.contains(kept), "{kept}: {shown}");
        }
    }
}
