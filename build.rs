//! Lays out warden's code for a small resident set: the functions that
//! start-up, an idle server and the call path run are linked first, side by
//! side, from `src/warden.order` (written by `scripts/link-order`).
//!
//! The kernel maps a binary's code 64 KiB around each page a process touches
//! first, so code run once at start-up, spread over a 16 MB `.text`, made
//! most of warden's idle RSS. Release builds only, and only where rustc links
//! with lld by default (x86_64 Linux, Rust 1.90 on) and no other linker is
//! asked for: the option is lld's. A symbol the list names that the binary
//! lacks (the code changed since the list was made) is skipped.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/warden.order");
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    if env("PROFILE") != "release" || env("TARGET") != "x86_64-unknown-linux-gnu" {
        return;
    }
    // Someone choosing the linker (RUSTFLAGS, or cargo's linker setting).
    if env("CARGO_ENCODED_RUSTFLAGS").contains("link")
        || !env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_empty()
    {
        return;
    }
    let minor = Command::new(env("RUSTC"))
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let v = String::from_utf8(o.stdout).ok()?;
            v.split_whitespace()
                .nth(1)?
                .split('.')
                .nth(1)?
                .parse::<u32>()
                .ok()
        });
    if minor.is_none_or(|m| m < 90) {
        return;
    }
    let order = std::path::Path::new(&env("CARGO_MANIFEST_DIR")).join("src/warden.order");
    println!(
        "cargo:rustc-link-arg-bin=warden=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bin=warden=-Wl,--no-warn-symbol-ordering");
}
