//! Compile-fail and compile-pass tests of `#[derive(Session)]`.
//!
//! The `.stderr` snapshots were written by rustc 1.95.0, the machines' stable toolchain; a
//! newer compiler may word or place some messages differently. Regenerate them with
//! `TRYBUILD=overwrite cargo test -p session-derive --test ui` and read every change.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
