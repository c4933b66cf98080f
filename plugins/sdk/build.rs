//! Compiles the plugin protocol (`proto/lessor/plugin/v1/plugin.proto`)
//! into the message types and the gRPC client and server of
//! [`lessor_plugin::proto`]. protox parses the .proto in Rust, so building
//! needs no `protoc`.
//!
//! In the repository `proto/…/plugin.proto` is a symbolic link to
//! `schemas/proto/…`, where the other languages' plugins compile it from;
//! `cargo package` stores the file itself, so the published crate builds
//! from the same protocol it was made with.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let file = root.join("lessor/plugin/v1/plugin.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let descriptors = protox::compile([&file], [&root])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
