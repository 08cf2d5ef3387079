use which::which;

/// Building this crate has an undeclared dependency on the `bpf-linker` binary. This would be
/// better expressed by [artifact-dependencies][bindeps] but issues such as
/// https://github.com/rust-lang/cargo/issues/12385 make their use impractical for the time
/// being. This file implements an imperfect solution: it causes cargo to rebuild the crate
/// whenever the mtime of `which bpf-linker` changes.
///
/// [bindeps]: https://doc.rust-lang.org/nightly/cargo/reference/unstable.html?highlight=feature#artifact-dependencies
fn main() {
    let bpf_linker = which("bpf-linker").expect(
        "bpf-linker not found on PATH: run `cargo xtask setup` (it builds it against the \
         nightly toolchain's libLLVM)",
    );
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
}
