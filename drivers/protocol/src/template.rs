//! OpenNebula templates: the ordered attribute lists of a `TEMPLATE` element and of the text
//! files `onedatastore create` and `onebackupjob create` read.
//!
//! The text syntax follows oned's own lexer (`src/parsers/template_parser.l`,
//! `template_syntax.y`), so a template that oned accepts reads the same here:
//! - a name is `[A-Za-z0-9_]+` and is upper-cased, at the top level and inside vectors;
//! - `NAME = "value"`: a quoted value may span lines; `\"` is the only escape, every other
//!   backslash stays as written (`"C:\dir"` is `C:\dir`);
//! - `NAME = value`: an unquoted value runs to the next blank, newline, `=`, `#`, `,`, `[` or `]`;
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
    "PASSWORD",
];

/// Whether an attribute's value must be hidden from output.
pub fn is_secret(name: &str) -> bool {
    SECRET_ATTRIBUTES
        .iter()
        .any(|s| s.eq_ignore_ascii_case(name))
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

    /// A copy with every secret value replaced by `********`, for display.
    pub fn redacted(&self) -> Template {
        let hide = |name: &str, v: &str| {
            if is_secret(name) {
                "********".to_string()
            } else {
                v.to_string()
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

/// Writes the text form: every value quoted, `"` escaped as `\"`, one attribute per line.
/// A value that ends in a backslash, or holds `\"`, cannot be written so that oned reads it
/// back unchanged (oned has no escape for a backslash); such values are written as they are.
impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quote = |v: &str| format!("\"{}\"", v.replace('"', "\\\""));
        for a in &self.attributes {
            match &a.value {
                Value::Single(v) => writeln!(f, "{} = {}", a.name, quote(v))?,
                Value::Vector(pairs) => {
                    write!(f, "{} = [", a.name)?;
                    for (i, (k, v)) in pairs.iter().enumerate() {
                        let sep = if i == 0 { "\n  " } else { ",\n  " };
                        write!(f, "{sep}{k} = {}", quote(v))?;
                    }
                    writeln!(f, " ]")?;
                }
            }
        }
        Ok(())
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

    fn value(&mut self, name: &str) -> Result<String, TemplateError> {
        if self.peek() == Some('"') {
            let open = self.mark();
            self.bump();
            let mut value = String::new();
            loop {
                match self.bump() {
                    None => {
                        return Err(self.error_at(
                            open,
                            format!("the quoted value of {name} is not closed (missing '\"')"),
                        ));
                    }
                    Some('"') => return Ok(value),
                    Some('\\') if self.peek() == Some('"') => {
                        self.bump();
                        value.push('"');
                    }
                    Some(c) => value.push(c),
                }
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
        Ok(value)
    }
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
    fn redacts_secrets() {
        let t = Template::parse("RESTIC_PASSWORD = s3cret\nX = [ PASSWORD = p ]\nN = 1")
            .expect("parses");
        let shown = t.redacted().to_string();
        assert!(
            !shown.contains("s3cret") && !shown.contains("= \"p\""),
            "{shown}"
        );
        assert!(shown.contains("N = \"1\""));
    }
}
