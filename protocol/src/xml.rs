//! A small element tree read with quick-xml.
//!
//! oned's messages are small (a VM document is tens of KiB), so a tree is simpler than
//! streaming and lets the typed layer report the full path of a missing or malformed element
//! ("DS_DRIVER_ACTION_DATA/DATASTORE/BASE_PATH is missing"). Attributes are ignored: oned puts
//! every value in elements. CDATA and entity-escaped text are both accepted, as oned uses both.

use quick_xml::Reader;
use quick_xml::events::Event;

/// Deeper than any document oned writes; the limit keeps hostile input from costing memory.
const MAX_DEPTH: usize = 64;

/// One XML element: its name, its text (CDATA and escaped text joined), its child elements.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

/// Why a document could not be read as XML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at byte {position})")]
pub struct XmlError {
    pub message: String,
    pub position: u64,
}

impl Element {
    /// Parses one document with exactly one root element.
    pub fn parse(input: &str) -> Result<Element, XmlError> {
        let mut roots = Self::parse_forest(input, false)?;
        roots.pop().ok_or_else(|| XmlError {
            message: "no root element".into(),
            position: 0,
        })
    }

    /// Parses a sequence of top-level elements. oned appends `<BACKUP_RESULT>` to the VM
    /// document it hands postbackup; this reads it whether it lands inside `<VM>` or after it.
    pub fn parse_siblings(input: &str) -> Result<Vec<Element>, XmlError> {
        Self::parse_forest(input, true)
    }

    fn parse_forest(input: &str, many: bool) -> Result<Vec<Element>, XmlError> {
        let mut reader = Reader::from_str(input);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.expand_empty_elements = false;
        let mut stack: Vec<Element> = Vec::new();
        let mut roots: Vec<Element> = Vec::new();
        let err = |message: String, position: u64| XmlError { message, position };
        loop {
            let position = reader.buffer_position();
            let event = reader
                .read_event()
                .map_err(|e| err(xml_error_text(&e), reader.error_position()))?;
            match event {
                Event::Start(start) => {
                    if !many && !roots.is_empty() {
                        return Err(err("content after the root element".into(), position));
                    }
                    if stack.len() >= MAX_DEPTH {
                        return Err(err(
                            format!("elements nested deeper than {MAX_DEPTH}"),
                            position,
                        ));
                    }
                    let name = decode_name(start.name().as_ref(), position)?;
                    stack.push(Element {
                        name,
                        ..Element::default()
                    });
                }
                Event::Empty(start) => {
                    if !many && !roots.is_empty() {
                        return Err(err("content after the root element".into(), position));
                    }
                    let name = decode_name(start.name().as_ref(), position)?;
                    let element = Element {
                        name,
                        ..Element::default()
                    };
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(element),
                        None => roots.push(element),
                    }
                }
                Event::End(_) => {
                    // check_end_names guarantees a matching Start was pushed.
                    let Some(element) = stack.pop() else {
                        return Err(err("unexpected closing tag".into(), position));
                    };
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(element),
                        None => roots.push(element),
                    }
                }
                Event::Text(text) => {
                    let decoded = text
                        .decode()
                        .map_err(|e| err(format!("bad text: {e}"), position))?;
                    let unescaped = quick_xml::escape::unescape(&decoded)
                        .map_err(|e| err(format!("bad text: {e}"), position))?;
                    push_text(&mut stack, !roots.is_empty(), &unescaped, position)?;
                }
                Event::GeneralRef(reference) => {
                    let name = reference
                        .decode()
                        .map_err(|e| err(format!("bad entity: {e}"), position))?;
                    let text = resolve_entity(&name)
                        .ok_or_else(|| err(format!("unknown entity &{name};"), position))?;
                    push_text(&mut stack, !roots.is_empty(), &text, position)?;
                }
                Event::CData(data) => {
                    let text = std::str::from_utf8(&data)
                        .map_err(|_| err("CDATA is not UTF-8".into(), position))?;
                    push_text(&mut stack, !roots.is_empty(), text, position)?;
                }
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
                Event::Eof => break,
            }
        }
        if let Some(open) = stack.last() {
            return Err(err(
                format!("element <{}> is not closed", open.name),
                reader.buffer_position(),
            ));
        }
        if roots.is_empty() {
            return Err(err("no root element".into(), 0));
        }
        Ok(roots)
    }

    /// The first child with this name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child with this name, in document order.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The element at a `/`-separated path of child names below this one.
    pub fn at(&self, path: &str) -> Option<&Element> {
        path.split('/')
            .try_fold(self, |element, name| element.child(name))
    }

    /// The element as XML text that [`Element::parse`] reads back as it is: the text first
    /// (escaped), then the children.
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        self.write_xml(&mut out);
        out
    }

    fn write_xml(&self, out: &mut String) {
        out.push('<');
        out.push_str(&self.name);
        out.push('>');
        for c in self.text.chars() {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '\r' => out.push_str("&#13;"),
                c => out.push(c),
            }
        }
        for child in &self.children {
            child.write_xml(out);
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }

    /// The text of the element at `path`, with surrounding whitespace removed.
    pub fn text_at(&self, path: &str) -> Option<&str> {
        self.at(path).map(|e| e.text.trim())
    }
}

fn push_text(
    stack: &mut [Element],
    after_root: bool,
    text: &str,
    position: u64,
) -> Result<(), XmlError> {
    match stack.last_mut() {
        Some(element) => {
            element.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err(XmlError {
            message: if after_root {
                "content after the root element".into()
            } else {
                "text before the root element".into()
            },
            position,
        }),
    }
}

fn resolve_entity(name: &str) -> Option<String> {
    if let Some(resolved) = quick_xml::escape::resolve_predefined_entity(name) {
        return Some(resolved.to_string());
    }
    let code = if let Some(hex) = name.strip_prefix("#x") {
        u32::from_str_radix(hex, 16).ok()?
    } else if let Some(dec) = name.strip_prefix('#') {
        dec.parse().ok()?
    } else {
        return None;
    };
    char::from_u32(code).map(String::from)
}

fn decode_name(raw: &[u8], position: u64) -> Result<String, XmlError> {
    String::from_utf8(raw.to_vec()).map_err(|_| XmlError {
        message: "element name is not UTF-8".into(),
        position,
    })
}

fn xml_error_text(error: &quick_xml::Error) -> String {
    // quick-xml's messages are already one line; keep them, minus any newline.
    error.to_string().replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cdata_escapes_and_nesting() {
        let doc = "<?xml version=\"1.0\"?><A><B><![CDATA[x < y]]></B><C>a &amp; b &#65;</C><D/><D>2</D></A>";
        let a = Element::parse(doc).expect("parses");
        assert_eq!(a.name, "A");
        assert_eq!(a.text_at("B"), Some("x < y"));
        assert_eq!(a.text_at("C"), Some("a & b A"));
        assert_eq!(a.children_named("D").count(), 2);
        assert_eq!(
            a.children_named("D").nth(1).map(|d| d.text.as_str()),
            Some("2")
        );
    }

    #[test]
    fn rejects_broken_documents() {
        for bad in [
            "",
            "   ",
            "hello",
            "<A>",
            "<A></B>",
            "<A></A><B/>",
            "<A></A>tail",
            "<A>&bogus;</A>",
        ] {
            assert!(Element::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn writes_what_it_reads() {
        let doc = "<VM><ID>22</ID><USER_TEMPLATE><NOTE><![CDATA[</VM><EVIL>1</EVIL> & \r x]]>]]&gt;</NOTE>\
                   </USER_TEMPLATE><BACKUPS/></VM><BACKUP_RESULT>FAILURE</BACKUP_RESULT>";
        let roots = Element::parse_siblings(doc).expect("parses");
        let vm = &roots[0];
        assert_eq!(
            vm.text_at("USER_TEMPLATE/NOTE"),
            Some("</VM><EVIL>1</EVIL> & \r x]]>")
        );
        let again = Element::parse(&vm.to_xml()).expect("reparses");
        assert_eq!(&again, vm);
        assert!(again.child("EVIL").is_none());
    }

    #[test]
    fn limits_depth() {
        let doc = "<a>".repeat(100) + &"</a>".repeat(100);
        let e = Element::parse(&doc).expect_err("too deep");
        assert!(e.message.contains("deeper"), "{e}");
    }
}
