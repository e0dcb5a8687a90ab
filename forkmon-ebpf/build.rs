use which::which;

/// Rebuild the eBPF object when bpf-linker changes: cargo does not track the
/// linker, and an object linked by a stale bpf-linker (another LLVM) is the
/// classic source of "works on my machine" verifier errors.
fn main() {
    let bpf_linker = which("bpf-linker")
        .expect("bpf-linker not found in PATH; run `cargo xtask setup` to install it");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
