//! The backup URL parser: never panics; what it reads, it writes back as a URL that reads the same.
#![no_main]

use backstop_protocol::url::BackupUrl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(url) = BackupUrl::parse(text) {
        let written = url.to_string();
        assert_eq!(BackupUrl::parse(&written).expect("a written URL parses"), url);
    }
});
