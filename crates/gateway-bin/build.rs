//! Link the gateway with packed relative relocations (`DT_RELR`) where the toolchain
//! and C library support them.
//!
//! A position-independent executable carries one relocation record per pointer in its
//! read-only data (vtables, string tables): for this binary about 40,000 of them, 24
//! bytes each, close to 1 MiB that the dynamic loader reads at every start, so they stay
//! in the process's resident set for its whole life. `-z pack-relative-relocs` (GNU ld
//! 2.38+, lld 15+; glibc 2.36+ applies them) packs them into a bitmap of a few KiB. The
//! executable stays position-independent (ASLR unchanged).
//!
//! The flag is probed by linking an empty C program with it, so an older toolchain
//! builds as before; `RELAY_NO_RELR=1` turns it off.

use std::process::{Command, Stdio};

fn main() {
    println!("cargo:rerun-if-env-changed=RELAY_NO_RELR");
    println!("cargo:rerun-if-env-changed=CC");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if target_os != "linux" || target_env != "gnu" || std::env::var_os("RELAY_NO_RELR").is_some() {
        return;
    }
    if links_with("-Wl,-z,pack-relative-relocs") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the C compiler (the linker driver rustc uses on Linux) links an empty
/// program with `flag`, without a warning about it.
fn links_with(flag: &str) -> bool {
    let Some(out_dir) = std::env::var_os("OUT_DIR") else {
        return false;
    };
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let src = std::path::Path::new(&out_dir).join("relr-probe.c");
    let exe = std::path::Path::new(&out_dir).join("relr-probe");
    if std::fs::write(&src, "int main(void) { return 0; }\n").is_err() {
        return false;
    }
    let output = Command::new(cc)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .arg(flag)
        .stdin(Stdio::null())
        .output();
    match output {
        // An older GNU ld warns "ignoring unsupported -z option" and links anyway.
        Ok(out) => out.status.success() && out.stderr.is_empty(),
        Err(_) => false,
    }
}
