//! `netc sweep` as a user meets it, on generated data: one run directory per combination, the
//! table, the plot and the best run; the same numbers whatever `--jobs`; and `--set` mistakes
//! that stop the sweep before anything is written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `netc` in `dir`, so a default `runs/` directory would land there.
fn netc_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netc"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("NETC_DATA")
        // A command that finds no data would otherwise download it; tests never leave 127.0.0.1.
        .env("NETC_OFFLINE", "1")
        .output()
        .expect("netc runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_no_panic(o: &Output) {
    let err = stderr(o);
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "a panic reached the user:\n{err}"
    );
}

/// A small generated data set in CIFAR-10's layout (400 training, 80 test images).
fn synthetic_data(dir: &Path) -> PathBuf {
    use netc_runtime::data::{write_synthetic, SyntheticFormat, SyntheticSpec};
    let spec = SyntheticSpec {
        records_per_file: 80,
        seed: 7,
        format: SyntheticFormat::Tarball,
    };
    write_synthetic(dir, &spec).expect("synthetic data")
}

/// A spec small enough to train in a second on generated data.
const TINY_SPEC: &str = "model tiny\ninput cifar10 { standardize }\n\
    defaults dense { init: lecun_normal, activation: selu }\n\
    repeat 2 { dense 16 }\nalpha_dropout 0.1\ndense 10 { activation: softmax }\n\
    train {\n  optimizer: nadam { lr: 1e-3 }\n  batch: 32\n  epochs: 3\n  validation: 80\n  seed: 1\n}\n";

struct Fixture {
    tmp: tempfile::TempDir,
    data: String,
    spec: String,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synthetic_data(&tmp.path().join("data"));
    let spec = tmp.path().join("tiny.net");
    std::fs::write(&spec, TINY_SPEC).expect("write spec");
    Fixture {
        data: data.to_str().expect("utf-8").to_string(),
        spec: spec.to_str().expect("utf-8").to_string(),
        tmp,
    }
}

const LRS: [&str; 3] = ["1e-4", "1e-3", "1e-2"];

fn sweep_json(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("sweep.json")).expect("sweep.json");
    serde_json::from_str(&text).expect("sweep.json is JSON")
}

/// The numbers of each run that must not depend on scheduling: (label, acc, loss, epoch).
fn outcomes(json: &serde_json::Value) -> Vec<(String, String, String, u64)> {
    json["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| {
            (
                r["label"].as_str().expect("label").to_string(),
                r["best_val_acc"].to_string(),
                r["best_val_loss"].to_string(),
                r["best_epoch"].as_u64().expect("epoch"),
            )
        })
        .collect()
}

#[test]
fn a_learning_rate_sweep_runs_tabulates_plots_and_names_the_best_whatever_the_jobs() {
    let f = fixture();
    let root = f.tmp.path();
    let out = root.join("lr-sweep");
    let set = format!("--set=optimizer.lr={}", LRS.join(","));
    let o = netc_in(
        root,
        &[
            "sweep",
            &f.spec,
            &set,
            "--epochs",
            "2",
            "--data",
            &f.data,
            "--out",
            out.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_no_panic(&o);

    for lr in LRS {
        let run = out.join(format!("lr={lr}"));
        for file in ["spec.net", "summary.json", "history.csv", "curves.png"] {
            assert!(
                run.join(file).is_file(),
                "{file} missing from {}",
                run.display()
            );
        }
        let spec = std::fs::read_to_string(run.join("spec.net")).expect("spec.net");
        assert!(spec.contains(&format!("nadam {{ lr: {lr} }}")), "{spec}");
        let history = std::fs::read_to_string(run.join("history.csv")).expect("history");
        assert_eq!(history.lines().count(), 3, "--epochs 2 plus the header");
    }

    let table = std::fs::read_to_string(out.join("sweep.md")).expect("sweep.md");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "| lr | best val acc | best val loss | epoch of best | seconds |"
    );
    assert_eq!(lines.len(), 2 + LRS.len(), "{table}");
    for (line, lr) in lines[2..].iter().zip(LRS) {
        assert!(line.starts_with(&format!("| {lr} | ")), "{table}");
    }
    assert!(stdout(&o).contains(&table), "the table is printed");
    let png = std::fs::read(out.join("sweep.png")).expect("sweep.png");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "sweep.png is a PNG");

    let json = sweep_json(&out);
    let runs = json["runs"].as_array().expect("runs");
    let best_acc = runs
        .iter()
        .filter_map(|r| r["best_val_acc"].as_f64())
        .fold(f64::NEG_INFINITY, f64::max);
    let best = runs
        .iter()
        .find(|r| r["best_val_acc"].as_f64() == Some(best_acc))
        .expect("a best run");
    assert_eq!(json["best"], best["label"]);
    let best_lr = best["values"][0]["value"].as_str().expect("value");
    assert_eq!(best["values"][0]["path"], "train.optimizer.lr");
    assert!(
        stdout(&o).contains(&format!("best: train.optimizer.lr={best_lr} ")),
        "{}",
        stdout(&o)
    );

    // The same sweep in two processes at a time, into the default directory.
    let o = netc_in(
        root,
        &[
            "sweep", &f.spec, &set, "--epochs", "2", "--data", &f.data, "--jobs", "2",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let sweeps: Vec<PathBuf> = std::fs::read_dir(root.join("runs"))
        .expect("runs/ was created")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(sweeps.len(), 1, "{sweeps:?}");
    let name = sweeps[0].file_name().expect("name").to_string_lossy();
    assert!(name.starts_with("sweep-tiny-"), "{name}");
    assert_eq!(outcomes(&sweep_json(&sweeps[0])), outcomes(&json));
}

#[test]
fn a_grid_of_two_parameters_runs_every_combination_in_order() {
    let f = fixture();
    let out = f.tmp.path().join("grid");
    let o = netc_in(
        f.tmp.path(),
        &[
            "sweep",
            &f.spec,
            "--set",
            "train.optimizer.lr=1e-3,3e-3",
            "--set",
            "batch=16,64",
            "--epochs",
            "1",
            "--data",
            &f.data,
            "--jobs",
            "3",
            "--out",
            out.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let labels: Vec<String> = outcomes(&sweep_json(&out))
        .into_iter()
        .map(|(label, ..)| label)
        .collect();
    assert_eq!(
        labels,
        [
            "lr=1e-3,batch=16",
            "lr=1e-3,batch=64",
            "lr=3e-3,batch=16",
            "lr=3e-3,batch=64"
        ]
    );
    let spec = std::fs::read_to_string(out.join("lr=3e-3,batch=16/spec.net")).expect("spec");
    assert!(
        spec.contains("lr: 3e-3") && spec.contains("batch: 16"),
        "{spec}"
    );
}

#[test]
fn a_bad_path_exits_1_with_a_suggestion_and_writes_nothing() {
    let f = fixture();
    let out = f.tmp.path().join("never");
    for (set, expected) in [
        ("optimiser.lr=1e-3,1e-2", "did you mean `optimizer.lr`?"),
        ("trian.batch=16", "did you mean `train.batch`?"),
        (
            "activation=relu",
            "is ambiguous: it matches `defaults.dense.activation`",
        ),
    ] {
        let o = netc_in(
            f.tmp.path(),
            &[
                "sweep",
                &f.spec,
                "--set",
                set,
                "--data",
                &f.data,
                "--out",
                out.to_str().expect("utf-8"),
            ],
        );
        assert_eq!(o.status.code(), Some(1), "{set}: {}", stderr(&o));
        assert!(stderr(&o).contains("netc::set::"), "{}", stderr(&o));
        assert!(stderr(&o).contains(expected), "{set}: {}", stderr(&o));
        assert_no_panic(&o);
        assert!(!out.exists(), "{set} wrote the sweep directory");
        assert!(!f.tmp.path().join("runs").exists(), "{set} wrote runs/");
    }
    // An option the block does not take is the checker's error, reported before any run.
    let o = netc_in(
        f.tmp.path(),
        &[
            "sweep",
            &f.spec,
            "--set",
            "optimizer.momentum=0.9",
            "--data",
            &f.data,
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("netc::check::unknown_property"),
        "{}",
        stderr(&o)
    );
    assert!(!f.tmp.path().join("runs").exists());
}

#[test]
fn a_malformed_set_is_a_usage_error() {
    let f = fixture();
    for (set, expected) in [
        ("lr", "there is no `=`"),
        ("lr=", "a value is empty"),
        ("lr=1e-3,,1e-2", "a value is empty"),
        ("=1e-3", "the path is empty"),
        ("lr=1e-3 }", "`1e-3 }` is not one `.net` value"),
        ("lr=1e-3,1e-3", "the value `1e-3` is given twice"),
    ] {
        let o = netc_in(f.tmp.path(), &["sweep", &f.spec, "--set", set]);
        assert_eq!(o.status.code(), Some(2), "{set}: {}", stderr(&o));
        assert!(stderr(&o).contains(expected), "{set}: {}", stderr(&o));
        assert!(stderr(&o).contains("help: "), "{set}: {}", stderr(&o));
        assert_no_panic(&o);
    }
    let o = netc_in(f.tmp.path(), &["sweep", &f.spec]);
    assert_eq!(o.status.code(), Some(2), "--set is required");
    assert!(!f.tmp.path().join("runs").exists());
}

// Issue 14: grid limits, one report per distinct lint, and interrupts.

#[test]
fn a_grid_over_the_limit_is_refused_before_anything_is_built() {
    let f = fixture();
    let values = |n: usize| (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    // A million combinations: refused from the value counts alone.
    let million = [
        format!("batch={}", values(100)),
        format!("train.epochs={}", values(100)),
        format!("train.seed={}", values(100)),
    ];
    let mut args = vec!["sweep", f.spec.as_str(), "--data", f.data.as_str()];
    for set in &million {
        args.extend(["--set", set.as_str()]);
    }
    let o = netc_in(f.tmp.path(), &args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("netc::sweep::too_many_runs"), "{err}");
    assert!(
        err.contains("1000000 combinations (100 × 100 × 100)"),
        "{err}"
    );
    assert!(err.contains("--max-runs 1000000"), "{err}");
    assert!(err.len() < 2_000, "{err}");
    assert!(!f.tmp.path().join("runs").exists());

    // `--max-runs` moves the limit both ways; past it, the sweep goes on to look for the data.
    let small = [
        "sweep",
        &f.spec,
        "--set",
        "batch=16,32",
        "--set",
        "lr=1e-3,1e-2",
    ];
    let o = netc_in(f.tmp.path(), &[&small[..], &["--max-runs", "3"]].concat());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("more than the 3 a sweep runs"),
        "{}",
        stderr(&o)
    );
    let o = netc_in(
        f.tmp.path(),
        &[&small[..], &["--max-runs", "4", "--data", "/nonexistent"]].concat(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("netc::data::not_found"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("too_many_runs"), "{}", stderr(&o));
    assert_no_panic(&o);
}

#[test]
fn a_lint_shared_by_many_combinations_is_shown_once() {
    let f = fixture();
    let o = netc_in(
        f.tmp.path(),
        &[
            "sweep",
            &f.spec,
            "--set",
            "optimizer.beta_1=0.995",
            "--set",
            "batch=16,32,64",
            "--data",
            "/nonexistent",
        ],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        err.matches("netc::lint::momentum_close_to_one").count(),
        1,
        "{err}"
    );
    assert!(err.contains("also apply to 2 more combinations"), "{err}");
}

/// The processes whose parent is `pid` (from /proc).
#[cfg(target_os = "linux")]
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`, where comm may hold spaces and parentheses.
        let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        if after_comm.split_whitespace().nth(1) == Some(pid.to_string().as_str()) {
            children.push(child);
        }
    }
    children
}

#[cfg(target_os = "linux")]
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A SIGINT to the sweep alone reaches its runs: they checkpoint and end, the sweep waits for
/// them, exits 130 and says how to resume each.
#[cfg(target_os = "linux")]
#[test]
fn an_interrupted_sweep_stops_its_runs_and_says_how_to_resume_them() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let f = fixture();
    let out = f.tmp.path().join("stopped");
    let sweep = Command::new(env!("CARGO_BIN_EXE_netc"))
        .args(["sweep", &f.spec, "--set", "optimizer.lr=1e-3,3e-3"])
        .args(["--backend", "interp", "--jobs", "2", "--epochs", "100000"])
        .args(["--data", &f.data, "--out"])
        .arg(&out)
        .current_dir(f.tmp.path())
        .env("NO_COLOR", "1")
        .env("NETC_OFFLINE", "1")
        .env("NETC_THREADS", "2")
        .env("PATH", "/usr/bin:/bin")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("netc starts");
    let runs = [out.join("lr=1e-3"), out.join("lr=3e-3")];
    // Both runs are training once both have written a checkpoint.
    let started = Instant::now();
    let mut children = Vec::new();
    while started.elapsed() < Duration::from_secs(120) {
        children = children_of(sweep.id());
        let trained = runs
            .iter()
            .all(|r| r.join("checkpoint/trainer.json").is_file());
        if trained && children.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-INT", &sweep.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let output = sweep.wait_with_output().expect("the sweep ends");
    let err = stderr(&output);
    // Runs left behind would train for hours: stop them before failing.
    let orphans: Vec<u32> = children.iter().copied().filter(|&pid| alive(pid)).collect();
    for pid in &orphans {
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .ok();
    }
    assert_eq!(children.len(), 2, "the runs never started:\n{err}");
    assert!(
        orphans.is_empty(),
        "runs outlived the sweep: {orphans:?}\n{err}"
    );
    assert_eq!(output.status.code(), Some(130), "{err}");
    assert!(
        err.contains("2 runs stopped, 0 finished, 0 not started"),
        "{err}"
    );
    for run in &runs {
        assert!(run.join("checkpoint/trainer.json").is_file(), "{err}");
        // The results so far are written, marked as interrupted.
        let summary: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("summary.json")).expect("summary.json"),
        )
        .expect("JSON");
        assert_eq!(summary["status"], "interrupted", "{summary}");
        let hint = format!(
            "resume with `{} run --resume {}`",
            env!("CARGO_BIN_EXE_netc"),
            run.display()
        );
        assert!(err.contains(&hint), "{err}");
    }
    assert!(!out.join("sweep.md").exists());
}
