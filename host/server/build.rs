//! Builds the WebAssembly components in `components/` (their own workspace,
//! for `wasm32-wasip2`) and hands their directory to the code and the tests
//! as `MAILWIT_COMPONENTS_DIR`. The binary embeds the reference components
//! so that the demo tenant runs with no files to install.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.join("../..").canonicalize().unwrap();
    let components = root.join("components");
    println!("cargo:rerun-if-changed={}", components.display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    // components/kv-env implements Spin's interfaces from the host's copy.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("host/runtime/wit-spin").display()
    );

    // OUT_DIR is <target>/<profile>/build/<pkg>/out: keep the guests' build
    // beside the host's, shared by every profile.
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = out.ancestors().nth(4).unwrap().join("wasm-components");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&components)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir)
        // The host's flags and jobserver are not the guests'.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("running cargo for the components");
    if !status.success() {
        panic!(
            "building components/ for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)"
        );
    }
    let dir = target_dir.join("wasm32-wasip2").join("release");
    println!("cargo:rustc-env=MAILWIT_COMPONENTS_DIR={}", dir.display());
}
