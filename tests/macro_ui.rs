//! Compile-time behaviour of `#[guarded_map]` / `#[derive(GuardedMap)]`: each misuse in
//! `tests/ui/*.rs` fails to compile, with the errors in its `.stderr` snapshot (pointing at the
//! offending token), and each program in `tests/ui/pass/` compiles and runs.
//!
//! The snapshots are the text of one compiler release, the one named in `tests/ui/pinned-rustc`
//! (as thiserror runs its UI tests on one channel only): the wording and layout of rustc's
//! errors change between releases. On that release the text is compared; on any other, each
//! misuse must still fail to compile, but its messages are not compared, so a compiler update
//! cannot turn the tests red with no change to the code.
//!
//! Refresh the snapshots after an intended change, or when moving the pin to a new release
//! (write its `rustc --version`, first two words, to `tests/ui/pinned-rustc`), with
//! `TRYBUILD=overwrite cargo test -p map-wrapper-suite --test macro_ui`, then read them.

use std::process::Command;

/// The compiler release the `.stderr` snapshots were written with, e.g. `rustc 1.95.0`.
fn pinned() -> String {
    std::fs::read_to_string("tests/ui/pinned-rustc").expect("tests/ui/pinned-rustc").trim().to_string()
}

/// `rustc --version` of the compiler cargo builds the cases with, first two words; `None` if
/// it cannot be run.
fn current() -> Option<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
}

#[test]
fn misuses_are_compile_errors_at_the_offending_token() {
    let (pinned, current) = (pinned(), current());
    if current.as_deref() == Some(pinned.as_str()) {
        let t = trybuild::TestCases::new();
        t.compile_fail("tests/ui/*.rs");
        return;
    }
    eprintln!(
        "macro_ui: {current:?} is not the pinned {pinned:?}: each misuse must fail to compile, its \
         messages are not compared"
    );
    // Copies of the cases without their snapshots, in a directory of their own, and trybuild
    // told to write (there) rather than compare: a case that compiles still fails the test.
    let dir = tempfile::tempdir().unwrap();
    let mut cases = 0;
    for entry in std::fs::read_dir("tests/ui").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
            cases += 1;
        }
    }
    assert!(cases > 0, "no UI cases found in tests/ui");
    // Read by trybuild when the cases run (when `t` drops). The other test of this file only
    // builds passing programs, which this setting does not affect.
    std::env::set_var("TRYBUILD", "overwrite");
    let t = trybuild::TestCases::new();
    t.compile_fail(dir.path().join("*.rs").to_str().unwrap());
    drop(t);
    let written = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|e| e == "stderr"))
        .count();
    assert_eq!(written, cases, "every misuse failed to compile, with errors");
}

#[test]
fn supported_shapes_compile_and_run() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
}
