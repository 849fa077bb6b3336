//! The example manifests (`manifests/examples/`) and the install's own custom resources are
//! what the mesh reads: every document of a kind it reads decodes and validates.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;

use resources::{classify, read, yaml_documents, Document};

#[test]
fn every_example_is_read_and_valid() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let mut read_objects = 0;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {}", dir.display());
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, doc) in yaml_documents(&text).into_iter().enumerate() {
            let doc = doc.unwrap_or_else(|e| panic!("{} document {i}: {e}", path.display()));
            match classify(&doc).unwrap_or_else(|e| panic!("{} document {i}: {e}", path.display()))
            {
                Document::Object(header) => {
                    read(header.kind, doc)
                        .unwrap_or_else(|e| panic!("{} document {i}: {e}", path.display()));
                    read_objects += 1;
                }
                Document::Empty => {}
                other => panic!(
                    "{} document {i}: not an object the mesh reads: {other:?}",
                    path.display()
                ),
            }
        }
    }
    assert!(read_objects >= 9, "{read_objects}");
}
