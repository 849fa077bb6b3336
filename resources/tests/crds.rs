//! The CRDs in `manifests/crds/` are the ones the types generate: a change to a type that
//! changes its schema fails here until the files are regenerated with
//! `BLESS_CRDS=1 cargo test -p resources --test crds`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;

/// The header of every generated file.
const HEADER: &str = "# Generated from the types of the `resources` crate; do not edit.\n\
# Regenerate: BLESS_CRDS=1 cargo test -p resources --test crds\n";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds")
}

fn rendered() -> Vec<(String, String)> {
    resources::crd::all()
        .iter()
        .map(|crd| {
            let yaml = serde_saphyr::to_string(crd).expect("yaml");
            (resources::crd::file_name(crd), format!("{HEADER}{yaml}"))
        })
        .collect()
}

#[test]
fn checked_in_crds_are_the_generated_ones() {
    let bless = std::env::var_os("BLESS_CRDS").is_some();
    let dir = dir();
    if bless {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut stale = Vec::new();
    for (name, text) in rendered() {
        let path = dir.join(&name);
        if bless {
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "these CRDs differ from what the types generate: {stale:?}; run \
         BLESS_CRDS=1 cargo test -p resources --test crds"
    );
    // No file there that is not generated.
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut expected: Vec<String> = rendered().into_iter().map(|(n, _)| n).collect();
    expected.sort();
    assert_eq!(
        files, expected,
        "a file in manifests/crds/ that no type generates"
    );
}

#[test]
fn generated_crds_read_back_as_crds() {
    for (name, text) in rendered() {
        let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            resources::yaml_parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(crd.metadata.name.is_some(), "{name}");
    }
}
