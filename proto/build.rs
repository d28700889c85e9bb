//! Generates the convoy.v1 code with a vendored protoc, so no system protoc is needed.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("convoy_v1_descriptor.bin"))
        // Artifact chunks as `bytes::Bytes`: the hub sends slices of one
        // shared buffer, and clients decode without another copy.
        .bytes(".convoy.v1.ArtifactChunk.data")
        // Small per-stream buffers (src/codec.rs): the hub holds one idle
        // Sync stream per agent.
        .codec_path("crate::codec::LeanCodec")
        .compile_protos(&["proto/convoy/v1/convoy.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
