//! Compiles the `.proto` files under `proto/` with `protox` (pure Rust, no system `protoc`)
//! and generates prost messages plus tonic clients and servers from the descriptor set.

// Build scripts talk to cargo through stdout.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

/// Every file compiled into the crate, relative to the `proto/` include directory.
const FILES: &[&str] = &[
    "workload.proto",
    "authorization.proto",
    "zds.proto",
    "ca.proto",
    "google_rpc_status.proto",
    "envoy_core.proto",
    "discovery.proto",
    "waypoint_policy.proto",
    "waypoint_route.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    for file in FILES {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }

    // protox bundles the google/protobuf well-known types, so imports of
    // any/struct/wrappers/empty/duration resolve without extra include paths.
    let fds = protox::compile(FILES, [&root])?;

    // `prost::Name` impls give every message its full name and its type URL
    // ("type.googleapis.com/<full name>", as `prost_types::Any::from_msg` and ADS use).
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    config.type_name_domain(["."], "type.googleapis.com");

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Keep the default mapping of `.google.protobuf.*` onto `prost_types`.
        .compile_well_known_types(false)
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
