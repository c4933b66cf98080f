//! Compiles the plugin protocol (`schemas/proto/lessor/plugin/v1`) into the
//! message types and the gRPC client and server of [`lessor_plugin::proto`].
//! protox parses the .proto in Rust, so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/proto");
    let file = root.join("lessor/plugin/v1/plugin.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let descriptors = protox::compile([&file], [&root])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
