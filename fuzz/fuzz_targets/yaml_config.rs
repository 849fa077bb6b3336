//! The YAML config loader: a file of the config directory istiod-lite watches (any number of
//! documents, any kinds), parsed into objects (`config_source::parse_file`), and the resources
//! crate's document splitting and decoding on its own.
//!
//! Never panics, whatever the text; nothing a file says makes the parser allocate without
//! bound (libFuzzer's `-malloc_limit_mb` in scripts/fuzz.sh catches that).
#![no_main]

use std::path::Path;

use istiod_lite::config_source::parse_file;
use istiod_lite::resources::{yaml_documents, yaml_value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_file(text, Path::new("fuzz.yaml"));
    let _ = yaml_value(text);
    for doc in yaml_documents(text) {
        let _ = doc.map(|v| v.to_string());
    }
});
