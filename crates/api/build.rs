//! Generates the gRPC code from `proto/raftkv.proto` with a vendored `protoc`, so that cargo
//! alone builds the project (no system protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free in edition 2021: build scripts are single-threaded at this point.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/raftkv.proto");
    println!("cargo:rerun-if-changed=proto/etcd_kv.proto");
    tonic_prost_build::configure().compile_protos(&["proto/raftkv.proto"], &["proto"])?;
    // Client only: RaftKV never serves etcd's API, the benchmark tool calls it.
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/etcd_kv.proto"], &["proto"])?;
    Ok(())
}
