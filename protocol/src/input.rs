//! Reading what oned hands an action: base64 or raw XML on stdin (driver contract §2.2, §12 Q2), or the
//! OpenNebula 6.6 argv form where the base64 came as the first argument.

use crate::xml::{Element, XmlError};
use base64::Engine;

/// How an action's stdin is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// base64 of `DS_DRIVER_ACTION_DATA` (monitor, rm, stat, restore, increment_flatten).
    Base64,
    /// The XML itself (backup, ls, backup_cancel, transfer-manager actions).
    RawXml,
}

/// Why the input could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("stdin is empty: expected {0}")]
    Empty(&'static str),
    #[error("stdin is not base64: {0}")]
    NotBase64(String),
    #[error("stdin is not UTF-8 text")]
    NotUtf8,
    #[error("stdin is not XML: {0}")]
    NotXml(XmlError),
}

fn expected(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::Base64 => "base64 of the DS_DRIVER_ACTION_DATA document",
        Encoding::RawXml => "an XML document",
    }
}

/// Decodes base64 leniently about whitespace (oned sends none; a person pasting `base64`
/// output sends line breaks), strictly about everything else.
pub fn decode_base64(text: &[u8]) -> Result<Vec<u8>, InputError> {
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return Err(InputError::Empty(expected(Encoding::Base64)));
    }
    base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .map_err(|e| {
            InputError::NotBase64(match e {
                base64::DecodeError::InvalidByte(offset, byte) => format!(
                    "invalid character {:?} at offset {offset}",
                    char::from(byte)
                ),
                base64::DecodeError::InvalidLength(n) => {
                    format!("{n} characters is not a valid base64 length")
                }
                base64::DecodeError::InvalidLastSymbol(offset, _) => {
                    format!("invalid last character at offset {offset}")
                }
                base64::DecodeError::InvalidPadding => "missing or misplaced '=' padding".into(),
            })
        })
}

/// The XML text carried by the input, decoded per `encoding`.
pub fn xml_text(raw: &[u8], encoding: Encoding) -> Result<String, InputError> {
    let bytes = match encoding {
        Encoding::Base64 => decode_base64(raw)?,
        Encoding::RawXml => {
            if raw.iter().all(u8::is_ascii_whitespace) {
                return Err(InputError::Empty(expected(encoding)));
            }
            raw.to_vec()
        }
    };
    String::from_utf8(bytes).map_err(|_| InputError::NotUtf8)
}

/// Decodes the input into one XML document.
pub fn decode(raw: &[u8], encoding: Encoding) -> Result<Element, InputError> {
    Element::parse(&xml_text(raw, encoding)?).map_err(InputError::NotXml)
}

/// Decodes input that may carry sibling elements after the root (see [`Element::parse_siblings`]).
pub fn decode_siblings(raw: &[u8], encoding: Encoding) -> Result<Vec<Element>, InputError> {
    Element::parse_siblings(&xml_text(raw, encoding)?).map_err(InputError::NotXml)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_the_errors() {
        let cases: [(&[u8], Encoding, &str); 6] = [
            (
                b"",
                Encoding::Base64,
                "stdin is empty: expected base64 of the DS_DRIVER_ACTION_DATA document",
            ),
            (
                b" \n",
                Encoding::RawXml,
                "stdin is empty: expected an XML document",
            ),
            (
                b"PD94bW!",
                Encoding::Base64,
                "stdin is not base64: invalid character '!' at offset 6",
            ),
            (
                b"PD9",
                Encoding::Base64,
                "stdin is not base64: missing or misplaced '=' padding",
            ),
            (b"//79", Encoding::Base64, "stdin is not UTF-8 text"),
            // base64 of "hello"
            (
                b"aGVsbG8=",
                Encoding::Base64,
                "stdin is not XML: text before the root element (at byte 0)",
            ),
        ];
        for (raw, enc, msg) in cases {
            let got = decode(raw, enc).expect_err(msg).to_string();
            assert_eq!(got, msg);
        }
    }

    #[test]
    fn tolerates_wrapped_base64() {
        let e = decode(b"PEE+\nPC9BPg==\n", Encoding::Base64).expect("decodes");
        assert_eq!(e.name, "A");
    }
}
