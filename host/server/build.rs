//! Builds the WebAssembly components in `components/` (their own workspace,
//! for `wasm32-wasip2`) and hands their directory to the code and the tests
//! as `MAILWIT_COMPONENTS_DIR`. The binary embeds the reference components
//! so that the demo tenant runs with no files to install.
//!
//! The guests need the `wasm32-wasip2` standard library. `rust-toolchain.toml`
//! lists the target, but rustup adds nothing when the pinned toolchain already
//! exists (a link to an installed one, as on our development machines), and
//! the guests' build would then fail minutes later with "can't find crate for
//! `core`". So this script checks first and, when `rustup` is on the PATH,
//! runs `rustup target add wasm32-wasip2` itself (it only downloads the
//! target); without rustup it stops at once with the command to run.

use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.join("../..").canonicalize().unwrap();
    let components = root.join("components");
    println!("cargo:rerun-if-changed={}", components.display());
    // The contract, and (under wit/deps/) Spin's interfaces, which both the
    // host and components/kv-env build against.
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("wit/deps/fermyon-spin-2.0.0").display()
    );

    ensure_guest_target(&components);

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
            GUEST_TARGET,
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
        panic!("building components/ for {GUEST_TARGET} failed (see the errors above)");
    }
    let dir = target_dir.join(GUEST_TARGET).join("release");
    println!("cargo:rustc-env=MAILWIT_COMPONENTS_DIR={}", dir.display());
}

/// Makes sure the toolchain that builds `components/` has the guest target's
/// standard library, installing it with rustup when it can.
fn ensure_guest_target(components: &Path) {
    if guest_target_installed(components) {
        return;
    }
    let add = format!("rustup target add {GUEST_TARGET}");
    // Run inside components/ so rustup picks the toolchain that builds them
    // (the pinned one in rust-toolchain.toml).
    match Command::new("rustup")
        .current_dir(components)
        .args(["target", "add", GUEST_TARGET])
        .status()
    {
        Ok(status) if status.success() && guest_target_installed(components) => {
            println!("cargo:warning=installed the {GUEST_TARGET} target with `{add}`");
        }
        Ok(status) => panic!(
            "the {GUEST_TARGET} target is not installed and `{add}` failed ({status}); \
             run it by hand, then build again"
        ),
        Err(err) => panic!(
            "the {GUEST_TARGET} target is not installed and rustup could not be run ({err}); \
             install the target's standard library (with rustup: `{add}`), then build again"
        ),
    }
}

/// Whether the rustc that builds `components/` has the guest target's
/// standard library: `rustc --print target-libdir` names the directory
/// whether or not it exists, so look for it.
fn guest_target_installed(components: &Path) -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(rustc)
        .current_dir(components)
        .args(["--print", "target-libdir", "--target", GUEST_TARGET])
        .output();
    match output {
        Ok(out) if out.status.success() => {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Path::new(&dir).is_dir()
                && std::fs::read_dir(&dir)
                    .map(|entries| {
                        entries
                            .flatten()
                            .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
                    })
                    .unwrap_or(false)
        }
        _ => false,
    }
}
