//! Records which commit the binary is built from, and that commit's date, for `--version` and
//! the `layerline_build_info` metric: `LAYERLINE_COMMIT` and `LAYERLINE_COMMIT_DATE`, both
//! `unknown` outside a git checkout (a source tarball), and `LAYERLINE_VERSION`, the two after
//! the package version. The commit's date rather than the
//! clock's keeps a build of one commit the same whenever it is made.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let date = git(&["log", "-1", "--format=%cs"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LAYERLINE_COMMIT={commit}");
    println!("cargo:rustc-env=LAYERLINE_COMMIT_DATE={date}");
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=LAYERLINE_VERSION={version} (commit {commit}, {date})");
    // Again when HEAD moves: to another branch, or to a new commit of this one.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{head}");
        }
        println!("cargo:rerun-if-changed={dir}/packed-refs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
