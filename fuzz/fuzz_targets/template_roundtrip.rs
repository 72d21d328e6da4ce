//! Writing templates: any attribute list either renders to text that reads back exactly as
//! it was, or is refused; rendering never panics.
#![no_main]

use backstop_protocol::template::{Attribute, Template, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Fields separated by NUL: name, value, name, value, ...; a name starting with '[' makes
    // a vector of the pairs that follow it up to the next such name.
    let fields: Vec<&str> = text.split('\0').collect();
    let mut t = Template::default();
    let mut i = 0;
    while i + 1 < fields.len() {
        let name: String = fields[i]
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let name = if name.is_empty() { "A".to_string() } else { name };
        if fields[i].starts_with('[') {
            let pairs = fields[i + 1]
                .split('\x01')
                .collect::<Vec<_>>()
                .chunks(2)
                .map(|p| ("K".to_string(), p.last().copied().unwrap_or_default().to_string()))
                .collect();
            t.attributes.push(Attribute {
                name,
                value: Value::Vector(pairs),
            });
        } else {
            t.attributes.push(Attribute {
                name,
                value: Value::Single(fields[i + 1].to_string()),
            });
        }
        i += 2;
    }
    if let Ok(written) = t.render() {
        let again = Template::parse(&written).expect("a rendered template parses");
        assert_eq!(again, t);
    }
});
