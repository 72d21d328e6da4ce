//! The OpenNebula template parser: never panics; what it reads, it writes back the same.
#![no_main]

use backstop_protocol::template::Template;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Template::parse(text) {
        // What it reads, it writes back the same, or refuses to write.
        if let Ok(written) = t.render() {
            let again = Template::parse(&written).expect("a written template parses");
            assert_eq!(again, t);
        }
    }
});
