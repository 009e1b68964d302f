//! Compresses the large embedded manifests (addons, Calico) (upstream's files, kept as they are in
//! `manifests/`) into OUT_DIR, so the binary carries them gzipped; `manifests.rs` unpacks each
//! once, on first use. A file kept gzipped in the repository (`<name>.gz`: upstream's file over
//! 2 MB, byte for byte inside) is copied as it is.
use std::io::Write;

/// The manifests embedded compressed (the small ones are embedded as text).
const PACKED: &[&str] = &[
    "cert-manager-v1.19.4.yaml",
    "ingress-nginx-controller-v1.15.1.yaml",
    "argo-cd-v3.5.1.yaml",
    "prometheus-operator-v0.83.0.yaml",
    "calico-v3.32.1.yaml",
];

fn main() {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for name in PACKED {
        let packed = format!("manifests/{name}.gz");
        if std::path::Path::new(&packed).exists() {
            println!("cargo:rerun-if-changed={packed}");
            std::fs::copy(&packed, out.join(format!("{name}.gz"))).unwrap_or_else(|e| panic!("{packed}: {e}"));
            continue;
        }
        let src = format!("manifests/{name}");
        println!("cargo:rerun-if-changed={src}");
        let text = std::fs::read(&src).unwrap_or_else(|e| panic!("{src}: {e}"));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&text).expect("compressing in memory");
        std::fs::write(out.join(format!("{name}.gz")), gz.finish().expect("compressing in memory"))
            .expect("writing OUT_DIR");
    }
}
