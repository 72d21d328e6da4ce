//! Secrets in URLs, hidden before a URL is printed (in an error, a log line, `show` output, a
//! Debug dump). The one place that decides what of a URL may be shown; everything that prints
//! a URL goes through it.
//!
//! - [`url`]: any URL. The password of its userinfo (`user:***@host`), its query (`?***`)
//!   and its fragment (`#***`) are hidden; scheme, user name, host, port and path are kept.
//!   That covers `http://oneadmin:pass@oned:2633/RPC2`, `s3:https://key:secret@host/bucket`,
//!   signed URLs (`?X-Amz-Signature=...`) and `?token=...`. A URL with no host at all
//!   (`nbd+unix:///disk?socket=/run/x.sock`, `qemu:///system?socket=...`) reaches nothing that
//!   could ask for a token: its query names a local socket and is kept, for the diagnostics.
//! - [`webhook`]: a webhook's URL is a secret as a whole: services put the token in the path
//!   (`https://hooks.example/services/T0/B0/XXXX`) as often as in the query. Only
//!   `scheme://host[:port]` is kept; userinfo and everything after the authority are hidden.
//! - [`text`]: free text (an error message from a library, a template value) with every
//!   `scheme://...` in it passed through [`url`].
//!
//! Parsing is deliberately simple and never fails: what cannot be read as a URL is hidden
//! rather than shown (a webhook without a scheme still loses its path).

/// What stands for a hidden part.
pub const HIDDEN: &str = "***";

/// A URL cut into the parts that decide what is shown.
struct Parts<'a> {
    /// `https://`, `s3:https://`, or empty.
    scheme: &'a str,
    /// The user name and password (without the `@`), if any.
    userinfo: Option<&'a str>,
    /// `host[:port]`.
    host: &'a str,
    /// From the first `/` after the authority up to `?` or `#`.
    path: &'a str,
    /// After `?` (up to `#`), if there is a `?`.
    query: Option<&'a str>,
    /// After `#`, if there is a `#`.
    fragment: Option<&'a str>,
}

fn parts(text: &str) -> Parts<'_> {
    let (scheme, rest) = match text.find("://") {
        Some(i) => text.split_at(i + 3),
        None => ("", text),
    };
    // The userinfo first: up to the last `@` with a `:` before it, as a password may hold
    // `/`, `?`, `#` or `@` (an `@` with a `:` before it in a path or query is taken for one
    // too: hiding too much is better than showing a password); a user name alone ends at the
    // first `/`, `?` or `#`.
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) if rest[..at].contains(':') || !rest[..at].contains(['/', '?', '#']) => {
            (Some(&rest[..at]), &rest[at + 1..])
        }
        _ => (None, rest),
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    Parts {
        scheme,
        userinfo,
        host,
        path,
        query,
        fragment,
    }
}

/// `url` as it may be printed: the userinfo's password, the query and the fragment hidden.
pub fn url(url: &str) -> String {
    let p = parts(url);
    let mut out = String::with_capacity(url.len());
    out.push_str(p.scheme);
    if let Some(userinfo) = p.userinfo {
        match userinfo.split_once(':') {
            Some((user, _)) => {
                out.push_str(user);
                out.push(':');
                out.push_str(HIDDEN);
            }
            None => out.push_str(userinfo),
        }
        out.push('@');
    }
    out.push_str(p.host);
    out.push_str(p.path);
    let local = !p.scheme.is_empty() && p.userinfo.is_none() && p.host.is_empty();
    match p.query {
        Some(q) if local => {
            out.push('?');
            out.push_str(q);
        }
        Some(_) => {
            out.push('?');
            out.push_str(HIDDEN);
        }
        None => {}
    }
    if p.fragment.is_some() {
        out.push('#');
        out.push_str(HIDDEN);
    }
    out
}

/// A webhook's URL as it may be printed: `scheme://host[:port]`, anything more hidden.
pub fn webhook(url: &str) -> String {
    let p = parts(url);
    let mut out = String::from(p.scheme);
    if p.userinfo.is_some() {
        out.push_str(HIDDEN);
        out.push('@');
    }
    out.push_str(p.host);
    let more = !matches!(p.path, "" | "/") || p.query.is_some() || p.fragment.is_some();
    if more {
        out.push('/');
        out.push_str(HIDDEN);
    } else {
        out.push_str(p.path);
    }
    out
}

/// Whether `c` may be part of a URL's scheme (RFC 3986: a letter, then letters, digits, `+`,
/// `-`, `.`).
fn scheme_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')
}

/// Where a URL written in free text ends: at white space, a quote or an angle bracket.
fn ends_url(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`')
}

/// Whether `c`, last in a URL written in text, is the text's punctuation rather than the URL's.
fn ends_sentence(c: char) -> bool {
    matches!(c, ':' | ',' | '.' | ';' | ')' | ']')
}

/// `text` with every URL in it (`scheme://` up to white space, a quote or an angle bracket,
/// without punctuation that ends it) passed through [`url`].
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let before = &rest[..at];
        let start = before
            .char_indices()
            .rev()
            .take_while(|(_, c)| scheme_char(*c))
            .last()
            .map_or(at, |(i, _)| i);
        let mut end = rest[at + 3..]
            .find(ends_url)
            .map_or(rest.len(), |n| at + 3 + n);
        // Punctuation right after a URL belongs to the sentence (`at http://h/x: refused`).
        while end > at + 3 && rest[..end].ends_with(ends_sentence) {
            end -= 1;
        }
        let scheme_ok = rest[start..at]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic());
        out.push_str(&rest[..start]);
        if scheme_ok {
            out.push_str(&url(&rest[start..end]));
        } else {
            out.push_str(&rest[start..end]);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_passwords_queries_and_fragments() {
        for (given, shown) in [
            ("http://oned:2633/RPC2", "http://oned:2633/RPC2"),
            (
                "http://oneadmin:opennebula@oned:2633/RPC2",
                "http://oneadmin:***@oned:2633/RPC2",
            ),
            ("https://user@host/x", "https://user@host/x"),
            ("https://u:p@ss:w@rd@host:8443/", "https://u:***@host:8443/"),
            (
                "http://oneadmin:pa/ss@oned:2633/RPC2",
                "http://oneadmin:***@oned:2633/RPC2",
            ),
            ("http://u:p?a#s@oned/x", "http://u:***@oned/x"),
            ("https://u:@host", "https://u:***@host"),
            (
                "https://hooks.example/notify?token=T0k3n&x=1",
                "https://hooks.example/notify?***",
            ),
            ("https://host/a#secret", "https://host/a#***"),
            ("https://host/a?q#f", "https://host/a?***#***"),
            ("https://host?token=x", "https://host?***"),
            (
                "s3:https://AKIA:wJalr@minio:9000/bucket/22",
                "s3:https://AKIA:***@minio:9000/bucket/22",
            ),
            ("s3:http://127.0.0.1:9000/b", "s3:http://127.0.0.1:9000/b"),
            ("AKIA:wJalr@minio:9000", "AKIA:***@minio:9000"),
            ("minio:9000", "minio:9000"),
            (
                "nbd+unix:///disk?socket=/run/x.sock",
                "nbd+unix:///disk?socket=/run/x.sock",
            ),
            ("qemu:///system?socket=/s#f", "qemu:///system?socket=/s#***"),
            ("https:///x?token=t", "https:///x?token=t"),
            ("?token=t", "?***"),
            ("", ""),
        ] {
            assert_eq!(url(given), shown, "{given}");
        }
    }

    #[test]
    fn webhooks_keep_only_scheme_host_and_port() {
        for (given, shown) in [
            ("https://hooks.example/T0k3n", "https://hooks.example/***"),
            (
                "https://hooks.example:8443/services/T0/B0/XXXX",
                "https://hooks.example:8443/***",
            ),
            ("http://127.0.0.1:9/?token=T0k3n", "http://127.0.0.1:9/***"),
            ("https://hooks.example#T0k3n", "https://hooks.example/***"),
            (
                "https://bot:T0k3n@hooks.example/",
                "https://***@hooks.example/",
            ),
            ("https://hooks.example", "https://hooks.example"),
            ("https://hooks.example/", "https://hooks.example/"),
            ("hooks.example/T0k3n", "hooks.example/***"),
            ("ftp://hooks.example/T0k3n", "ftp://hooks.example/***"),
        ] {
            assert_eq!(webhook(given), shown, "{given}");
        }
    }

    #[test]
    fn every_url_in_a_text_is_redacted() {
        for (given, shown) in [
            (
                "oned at http://oneadmin:pw@oned:2633/RPC2: connection refused",
                "oned at http://oneadmin:***@oned:2633/RPC2: connection refused",
            ),
            (
                "bad uri: \"https://h/x?token=T0k3n\" and https://a:b@c",
                "bad uri: \"https://h/x?***\" and https://a:***@c",
            ),
            (
                "see <https://h?sig=1>, then s3:http://k:s@m:9000/b.",
                "see <https://h?***>, then s3:http://k:***@m:9000/b.",
            ),
            (
                "(https://h/x?t=1), https://h/y?t=2; https://h/z?t=3.",
                "(https://h/x?***), https://h/y?***; https://h/z?***.",
            ),
            ("no url here: a:b@c", "no url here: a:b@c"),
            ("://x?y and 9p://x?y", "://x?y and 9p://x?y"),
            ("ends with https://", "ends with https://"),
            (
                "ünïcode ⇒ https://ü:ß@h/ä?ö",
                "ünïcode ⇒ https://ü:***@h/ä?***",
            ),
        ] {
            assert_eq!(text(given), shown, "{given}");
        }
    }
}
