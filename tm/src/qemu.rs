//! What the host step asks of qemu-img: an image's format, size and persistent bitmaps, and
//! adding or removing a bitmap. The image must not be in use by a writer (the VM is off).

use backstop_datastore::{Error, ErrorKind};
use std::path::Path;

/// A persistent dirty bitmap of a qcow2 image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    pub name: String,
    /// `auto` (it records writes), `in-use` (the image was not closed cleanly: inconsistent).
    pub flags: Vec<String>,
}

impl Bitmap {
    /// A bitmap that recorded every write since it was made: enabled and closed cleanly.
    pub fn consistent(&self) -> bool {
        self.flags.iter().any(|f| f == "auto") && !self.flags.iter().any(|f| f == "in-use")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub format: String,
    pub virtual_size: u64,
    pub bitmaps: Vec<Bitmap>,
}

use backstop_datastore::actions::chain::qemu_img as run;

/// `qemu-img info` of a disk.
pub fn info(disk: &Path) -> Result<Info, Error> {
    let text = run(&[
        "info".as_ref(),
        "--output=json".as_ref(),
        "-U".as_ref(),
        disk.as_os_str(),
    ])?;
    parse_info(&text).map_err(|e| {
        Error::new(
            ErrorKind::Input,
            format!("qemu-img info of {}: {e}", disk.display()),
        )
    })
}

pub fn parse_info(text: &str) -> Result<Info, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let format = v["format"].as_str().ok_or("no format")?.to_string();
    let virtual_size = v["virtual-size"].as_u64().ok_or("no virtual-size")?;
    let bitmaps = v["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| {
                    Some(Bitmap {
                        name: b["name"].as_str()?.to_string(),
                        flags: b["flags"]
                            .as_array()
                            .map(|f| {
                                f.iter()
                                    .filter_map(|x| x.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Info {
        format,
        virtual_size,
        bitmaps,
    })
}

pub fn bitmap_add(disk: &Path, name: &str) -> Result<(), Error> {
    run(&[
        "bitmap".as_ref(),
        "--add".as_ref(),
        disk.as_os_str(),
        name.as_ref(),
    ])
    .map(|_| ())
}

pub fn bitmap_remove(disk: &Path, name: &str) -> Result<(), Error> {
    run(&[
        "bitmap".as_ref(),
        "--remove".as_ref(),
        disk.as_os_str(),
        name.as_ref(),
    ])
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_with_bitmaps() {
        let text = r#"{"virtual-size": 52428800, "filename": "d", "format": "qcow2",
            "format-specific": {"type": "qcow2", "data": {"compat": "1.1",
            "bitmaps": [{"flags": ["auto"], "name": "one-22-3", "granularity": 65536},
                        {"flags": ["in-use", "auto"], "name": "one-22-2", "granularity": 65536},
                        {"flags": [], "name": "other", "granularity": 65536}]}}}"#;
        let i = parse_info(text).expect("parse");
        assert_eq!(i.format, "qcow2");
        assert_eq!(i.virtual_size, 52428800);
        let c: Vec<(&str, bool)> = i
            .bitmaps
            .iter()
            .map(|b| (b.name.as_str(), b.consistent()))
            .collect();
        assert_eq!(
            c,
            [("one-22-3", true), ("one-22-2", false), ("other", false)]
        );
        let raw = parse_info(r#"{"virtual-size": 1024, "format": "raw"}"#).expect("raw");
        assert!(raw.bitmaps.is_empty());
        assert!(parse_info("{}").is_err());
    }
}
