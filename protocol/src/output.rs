//! The output discipline oned's driver helper expects (driver contract §2.3, §12 Q1):
//! - success: exit 0 and the whole of stdout is the answer, so it is exactly one line
//!   (`monitor` alone may print several, as oned base64-wraps them);
//! - failure: exit 1; every stderr line that is not a log line becomes the error text, so the
//!   failure is one line;
//! - `ERROR:`/`INFO:`/`WARN:`/`DEBUG:` lines on stderr go to oned's log only.

use std::io::{self, Write};

/// What an action answers on stdout when it succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Nothing (rm, backup_cancel; increment_flatten's "nothing to do").
    Nothing,
    /// Exactly one line.
    Line(String),
    /// Several lines: monitor only.
    Lines(Vec<String>),
}

/// Replaces line breaks so a message stays one line.
pub fn one_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes a successful answer.
pub fn write_answer(out: &mut impl Write, answer: &Answer) -> io::Result<()> {
    match answer {
        Answer::Nothing => {}
        Answer::Line(line) => writeln!(out, "{}", one_line(line))?,
        Answer::Lines(lines) => {
            for line in lines {
                writeln!(out, "{}", one_line(line))?;
            }
        }
    }
    out.flush()
}

/// Writes the failure line: `<action>: <message>`, every URL in it redacted
/// ([`crate::redact::text`]: oned keeps the line in its log and shows it to users).
pub fn write_failure(err: &mut impl Write, action: &str, message: &str) -> io::Result<()> {
    writeln!(err, "{action}: {}", crate::redact::text(&one_line(message)))?;
    err.flush()
}

/// Log severities oned recognises on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

/// Writes a line that oned logs instead of treating as error text, every URL in it redacted.
pub fn write_log(err: &mut impl Write, level: Level, message: &str) -> io::Result<()> {
    let tag = match level {
        Level::Error => "ERROR",
        Level::Warn => "WARN",
        Level::Info => "INFO",
        Level::Debug => "DEBUG",
    };
    writeln!(err, "{tag}: {}", crate::redact::text(&one_line(message)))
}

/// Logs to this process's stderr (best effort: a closed stderr must not fail the action).
pub fn log(level: Level, message: &str) {
    let _ = write_log(&mut io::stderr().lock(), level, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_one_line() {
        let mut out = Vec::new();
        write_answer(&mut out, &Answer::Line("abc 10\n raw".into())).expect("writes");
        assert_eq!(out, b"abc 10 raw\n");
        let mut err = Vec::new();
        write_failure(&mut err, "rm", "first\nsecond\r\n").expect("writes");
        assert_eq!(err, b"rm: first second\n");
        let mut log = Vec::new();
        write_log(&mut log, Level::Info, "a\nb").expect("writes");
        assert_eq!(log, b"INFO: a b\n");
        let mut err = Vec::new();
        write_failure(
            &mut err,
            "monitor",
            "oned at http://u:pw@h/RPC2?k=v: refused",
        )
        .expect("writes");
        assert_eq!(err, b"monitor: oned at http://u:***@h/RPC2?***: refused\n");
        let mut log = Vec::new();
        write_log(&mut log, Level::Error, "GET https://h/x?sig=abc").expect("writes");
        assert_eq!(log, b"ERROR: GET https://h/x?***\n");
    }
}
