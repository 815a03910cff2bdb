// Build script for the `canopy` binary: compiles bpf/*.bpf.c with clang-22 into libbpf-rs
// skeletons and generates the Rust side of bpf/intf.h. (A stub until the scheduler lands.)
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=bpf");
}
