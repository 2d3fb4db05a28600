//! Golden-output tests: the compiler's main tests.
//!
//! Every `tests/golden/ok/NAME.net` must compile without errors; its AST, IR and summary dumps
//! must equal `NAME.ast`, `NAME.ir` and `NAME.summary`, and its warnings (if any) `NAME.stderr`.
//! Every `tests/golden/err/NAME.net` must fail to compile, and its rendered diagnostics must
//! equal `NAME.stderr`. Every `tests/golden/clif/NAME.net` must produce the kernels in
//! `NAME.clif`. Adding a case is adding a file. A mismatch prints a unified diff;
//! `NETC_BLESS=1 cargo test --test golden` rewrites the expected files (read the diff, then
//! commit it with the reason).

use std::path::{Path, PathBuf};

use netc_diagnostics as diagnostics;
use netc_front::print;

/// Diagnostics are rendered without colour at this width so `.stderr` files are stable.
const WIDTH: usize = 100;

fn cases(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "net"))
        .collect();
    files.sort();
    files
}

fn display_name(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Compares `actual` with the file at `path` (or writes it when blessing). Returns a failure
/// message instead of panicking so every mismatch of a run is reported.
fn expect_file(path: &Path, actual: &str) -> Option<String> {
    let bless = std::env::var_os("NETC_BLESS").is_some_and(|v| v == "1");
    let expected = std::fs::read_to_string(path).ok();
    if expected.as_deref() == Some(actual) || (expected.is_none() && actual.is_empty()) {
        return None;
    }
    if bless {
        if actual.is_empty() {
            let _ = std::fs::remove_file(path);
        } else {
            std::fs::write(path, actual)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
        return None;
    }
    let expected = expected.unwrap_or_default();
    let diff = similar::TextDiff::from_lines(&expected, actual)
        .unified_diff()
        .header("expected", "actual")
        .to_string();
    Some(format!("{} differs:\n{diff}", display_name(path)))
}

fn run_cases(dir: &str, expect_errors: bool) {
    let mut failures = Vec::new();
    let files = cases(dir);
    assert!(!files.is_empty(), "no cases in tests/golden/{dir}");
    for file in &files {
        let source = std::fs::read_to_string(file).expect("golden specs are UTF-8");
        let compiled = netc_front::compile(&source);
        let name = display_name(file);
        if compiled.has_errors() != expect_errors {
            let rendered = diagnostics::render(&name, &source, &compiled.diags, WIDTH, false);
            failures.push(format!(
                "{name}: expected {}, got:\n{rendered}",
                if expect_errors { "errors" } else { "no errors" }
            ));
            continue;
        }
        let stderr = diagnostics::render(&name, &source, &compiled.diags, WIDTH, false);
        let mut outputs = vec![("stderr", stderr)];
        if !expect_errors {
            let program = compiled
                .program
                .as_ref()
                .expect("a spec without errors lowers");
            outputs.push(("ast", print::ast(compiled.ast.as_ref().expect("parsed"))));
            outputs.push(("ir", print::ir(program)));
            outputs.push(("summary", print::summary(program)));
        }
        for (ext, actual) in outputs {
            if let Some(f) = expect_file(&file.with_extension(ext), &actual) {
                failures.push(f);
            }
        }
    }
    assert_matched(&failures);
}

#[test]
fn ok_cases_compile_and_match_their_dumps() {
    run_cases("ok", false);
}

#[test]
fn err_cases_fail_with_the_expected_diagnostics() {
    run_cases("err", true);
}

/// Every `tests/golden/clif/NAME.net` must compile without errors, and the CLIF of its kernels
/// (generated for the fixed x86-64 ISA, never the host's) must equal `NAME.clif`.
#[test]
fn clif_cases_match_their_kernels() {
    program_cases("clif", |name, program| {
        let clif = netc_jit::emit_clif(program).unwrap_or_else(|e| panic!("{name}: no CLIF: {e}"));
        vec![("clif".to_owned(), clif)]
    });
}

/// Every `tests/golden/asm/NAME.net` must produce the machine code in `NAME.TIER.asm` for each
/// full-width tier (`netc compile --emit asm --tier TIER`): Cranelift's kernels for the fixed
/// ISA, and the GEMMs they call, which depend on the tier alone, so the files hold on any x86-64
/// host, with or without the tier.
#[cfg(target_arch = "x86_64")]
#[test]
fn asm_cases_match_their_machine_code() {
    program_cases("asm", |name, program| {
        [netc_jit::Tier::Avx2, netc_jit::Tier::Avx512]
            .into_iter()
            .map(|tier| {
                let asm = netc_jit::emit_asm(program, tier)
                    .unwrap_or_else(|e| panic!("{name}: no machine code: {e}"));
                (format!("{}.asm", tier.name()), asm)
            })
            .collect()
    });
}

/// Every `tests/golden/DIR/NAME.net` must compile without errors, and each `(extension, text)`
/// that `dump` makes of its program must equal `NAME.extension`.
fn program_cases(dir: &str, dump: impl Fn(&str, &netc_ir::ir::Program) -> Vec<(String, String)>) {
    let mut failures = Vec::new();
    let files = cases(dir);
    assert!(!files.is_empty(), "no cases in tests/golden/{dir}");
    for file in &files {
        let source = std::fs::read_to_string(file).expect("golden specs are UTF-8");
        let compiled = netc_front::compile(&source);
        let name = display_name(file);
        let Some(program) = compiled.program.as_ref().filter(|_| !compiled.has_errors()) else {
            let rendered = diagnostics::render(&name, &source, &compiled.diags, WIDTH, false);
            failures.push(format!("{name}: expected no errors, got:\n{rendered}"));
            continue;
        };
        for (ext, text) in dump(&name, program) {
            if let Some(f) = expect_file(&file.with_extension(ext), &text) {
                failures.push(f);
            }
        }
    }
    assert_matched(&failures);
}

/// Fails with every mismatch and how to re-bless.
fn assert_matched(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{}\n\n{} golden mismatch(es); if the change is intended, re-bless with \
         `NETC_BLESS=1 cargo test --test golden`, read the diff and commit it with the reason",
        failures.join("\n"),
        failures.len()
    );
}

/// The specs of the exercise compile cleanly (no errors, no lints) and keep their documented
/// shape; the baseline has exactly the Keras model's 500,210 parameters.
#[test]
fn exercise_specs_compile_without_warnings() {
    let specs = Path::new(env!("CARGO_MANIFEST_DIR")).join("specs");
    let mut count = 0;
    for entry in std::fs::read_dir(&specs).expect("specs/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|x| x != "net") {
            continue;
        }
        count += 1;
        let source = std::fs::read_to_string(&path).expect("UTF-8");
        let compiled = netc_front::compile(&source);
        let rendered =
            diagnostics::render(&display_name(&path), &source, &compiled.diags, WIDTH, false);
        assert!(compiled.diags.is_empty(), "{rendered}");
        if path.file_stem().is_some_and(|s| s == "baseline") {
            let program = compiled.program.expect("baseline lowers");
            assert_eq!(program.param_count(), 500_210);
            assert_eq!(program.trainable_param_count(), 500_210);
        }
    }
    assert!(count >= 6, "expected the six exercise specs, found {count}");
}
