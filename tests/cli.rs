//! The `netc` binary as a user meets it: exit codes, where output goes, and that no input or
//! flag ever shows a Rust panic.

use std::path::Path;
use std::process::{Command, Output};

fn netc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .expect("netc runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_no_panic(o: &Output) {
    let err = stderr(o);
    assert!(
        !err.contains("panicked"),
        "a panic reached the user:\n{err}"
    );
    assert!(
        !err.contains("RUST_BACKTRACE"),
        "a panic reached the user:\n{err}"
    );
}

#[test]
fn check_exits_0_for_clean_and_warning_specs() {
    let o = netc(&[
        "check",
        "specs/baseline.net",
        "tests/golden/ok/warn_momentum.net",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("netc::lint::momentum_close_to_one"));
}

#[test]
fn check_exits_1_for_errors_and_reports_them_all() {
    let o = netc(&["check", "tests/golden/err/many_errors_at_once.net"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("unknown activation `rellu`"), "{err}");
    assert!(err.contains("did you mean `relu`?"), "{err}");
    assert!(err.contains("dropout rate must be in [0, 1)"), "{err}");
    assert_no_panic(&o);
}

#[test]
fn compile_summary_shows_the_keras_parameter_count() {
    let o = netc(&["compile", "specs/baseline.net", "--emit", "summary"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Total params: 500,210"), "{out}");
    assert!(out.contains("Non-trainable params: 0"), "{out}");
}

#[test]
fn compile_emits_ast_and_ir() {
    for (emit, needle) in [("ast", "repeat 20"), ("ir", "loss = softmax_cross_entropy")] {
        let o = netc(&["compile", "specs/alpha_dropout.net", "--emit", emit]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains(needle));
    }
}

#[test]
fn missing_and_unreadable_files_are_diagnostics() {
    let o = netc(&["check", "specs/does_not_exist.net"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot read"), "{}", stderr(&o));
    assert_no_panic(&o);
    let o = netc(&["check", "specs"]);
    assert_eq!(o.status.code(), Some(1));
    assert_no_panic(&o);
}

#[test]
fn binary_files_are_diagnostics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.net");
    std::fs::write(&path, b"model m\n\xff\xfe\x00garbage\n").expect("write");
    let o = netc(&["check", path.to_str().expect("utf-8 path")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not UTF-8"), "{}", stderr(&o));
    assert_no_panic(&o);
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        vec!["compile", "specs/baseline.net", "--emit", "wat"],
        vec!["frobnicate"],
        vec!["check"],
        vec![],
    ] {
        let o = netc(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert_no_panic(&o);
    }
}

#[test]
fn every_golden_error_case_exits_1_without_panicking() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/err");
    for entry in std::fs::read_dir(dir).expect("golden dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|x| x == "net") {
            let o = netc(&["check", path.to_str().expect("utf-8 path")]);
            assert_eq!(o.status.code(), Some(1), "{}", path.display());
            assert_no_panic(&o);
        }
    }
}
