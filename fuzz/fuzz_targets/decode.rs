//! The message decoder: arbitrary stdin, both encodings, every request type. Must never panic.
#![no_main]

use backstop_protocol::input::{self, Encoding};
use backstop_protocol::message::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for encoding in [Encoding::Base64, Encoding::RawXml] {
        if let Ok(root) = input::decode(data, encoding) {
            let _ = MonitorRequest::from_xml(&root);
            let _ = RmRequest::from_xml(&root);
            let _ = FlattenRequest::from_xml(&root);
            let _ = StatRequest::from_xml(&root);
            let _ = RestoreRequest::from_xml(&root);
            let _ = BackupRequest::from_xml(&root);
            let _ = LsRequest::from_xml(&root);
        }
        if let Ok(roots) = input::decode_siblings(data, encoding) {
            let _ = vm_from_siblings(&roots);
        }
    }
});
