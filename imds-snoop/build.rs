//! Builds the kernel program (imds-snoop-ebpf) for bpfel/bpfeb with aya-build, as aya's own
//! template does: `cargo build` alone produces a binary with the object embedded, and cargo
//! rebuilds it whenever the eBPF crate changes.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // Lets pure-userspace work (unit tests, clippy) go on without the nightly toolchain and
        // bpf-linker: the binary then refuses to start tracing with a clear message.
        fs::write(out_dir.join("imds-snoop"), b"").context("writing empty eBPF placeholder")?;
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "imds-snoop-ebpf")
        .ok_or_else(|| anyhow!("imds-snoop-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?
        .as_str()
        .to_owned();
    aya_build::build_ebpf(
        [Package {
            name: "imds-snoop-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
