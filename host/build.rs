//! Builds the default stage components (and the test and example plugins) for
//! `wasm32-wasip2`, so that `cargo build` is the only step a user runs.
//!
//! The nested cargo uses its own target directory: the outer build holds the
//! lock on the main one. Its output dir is exported as `SQUALL_COMPONENTS_DIR`;
//! the host embeds the three default components from there.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const COMPONENTS: &[(&str, &str)] = &[
    ("squall-segmenter", "squall_segmenter"),
    ("squall-personaliser", "squall_personaliser"),
    ("squall-sender", "squall_sender"),
    ("squall-test-hostile", "squall_test_hostile"),
    ("squall-example-acme-gateway", "squall_example_acme_gateway"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    // Relative to this package (cargo resolves them against the package
    // root of the build at hand): build units are shared by checkouts that
    // share a target dir, and absolute paths would keep watching whichever
    // checkout ran the script last.
    for watched in [
        "wit",
        "components",
        "tests/plugins",
        "examples/plugins",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed=../{watched}");
    }
    let target_dir = env::var_os("SQUALL_WASM_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("wasm-components"));
    println!("cargo:rerun-if-env-changed=SQUALL_WASM_TARGET_DIR");

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--locked",
            "--profile",
            "wasm",
            "--target",
            "wasm32-wasip2",
        ])
        .env("CARGO_TARGET_DIR", &target_dir);
    for (package, _) in COMPONENTS {
        cmd.args(["-p", package]);
    }
    // Flags and wrappers meant for the host build (clippy, coverage, native
    // CPU tuning) must not leak into the Wasm build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("cannot run cargo to build the Wasm components");
    if !status.success() {
        panic!(
            "building the Wasm components failed; is the target installed? Run `rustup target add wasm32-wasip2`"
        );
    }
    let out = target_dir.join("wasm32-wasip2").join("wasm");
    for (_, file) in COMPONENTS {
        let path = out.join(format!("{file}.wasm"));
        assert!(path.exists(), "missing component {}", path.display());
    }
    println!("cargo:rustc-env=SQUALL_COMPONENTS_DIR={}", out.display());
}
