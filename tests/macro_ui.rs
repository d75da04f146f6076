//! Compile-time behaviour of `#[guarded_map]` / `#[derive(GuardedMap)]`: each misuse in
//! `tests/ui/*.rs` fails with the errors in its `.stderr` snapshot (pointing at the offending
//! token), and each program in `tests/ui/pass/` compiles and runs.
//!
//! Refresh the snapshots after an intended change with
//! `TRYBUILD=overwrite cargo test -p map-wrapper-suite --test macro_ui`, then read them.

#[test]
fn misuses_are_compile_errors_at_the_offending_token() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}

#[test]
fn supported_shapes_compile_and_run() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
}
