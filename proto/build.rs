//! Generates the coffer.v1 Rust code and a file-descriptor set for server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps the build free of system packages.
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        std::env::set_var("PROTOC", protoc);
    }
    let include = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut protos: Vec<PathBuf> = std::fs::read_dir("coffer/v1")?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    protos.sort();
    // The directory too, so a new .proto file is picked up.
    println!("cargo:rerun-if-changed=coffer/v1");
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("coffer_descriptor.bin"))
        // Secret values: their `Debug` is written by hand, redacted (lib.rs).
        .skip_debug([
            "coffer.v1.S3CredentialValues",
            "coffer.v1.LeasedS3Credentials",
            // Notification secrets: a webhook's headers, a signing secret.
            "coffer.v1.WebhookChannel",
            // An SMTP login's password.
            "coffer.v1.EmailChannel",
            "coffer.v1.CreateNotificationChannelResponse",
            "coffer.v1.RotateNotificationChannelSecretResponse",
            // A copy run's source repository: its catalog key.
            "coffer.v1.CopySource",
        ])
        .compile_protos(&protos, &[PathBuf::from("."), include])?;
    Ok(())
}
