//! The OpenNebula template parser: never panics; what it reads, it writes back the same.
#![no_main]

use backstop_protocol::template::Template;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Template::parse(text) {
        // oned has no escape for a backslash, so only backslash-free templates must round-trip.
        if !text.contains('\\') {
            let again = Template::parse(&t.to_string()).expect("a written template parses");
            assert_eq!(again, t);
        }
    }
});
