//! `netc sweep`.

use super::*;

#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    /// The `.net` spec to sweep; each combination runs a copy rewritten by the `--set`s.
    spec: PathBuf,
    /// `PATH=VALUE[,VALUE...]`: the values one parameter takes, e.g.
    /// `train.optimizer.lr=1e-4,3e-4`; repeat for a grid. Paths: docs/language.md, "Addressing
    /// parameters (`--set`)".
    #[arg(long = "set", value_name = "PATH=VALUES", required = true, value_parser = parse_set)]
    set: Vec<netc_front::overrides::SetArg>,
    #[command(flatten)]
    common: DataArgs,
    /// Train every run this many epochs instead of the spec's.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    epochs: Option<u64>,
    /// Runs at once, each in its own process.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    jobs: u64,
    /// Sweep directory (default: runs/sweep-<model>-<UTC time>); never overwritten.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Refuse grids of more than N combinations, each of which is a whole training run.
    #[arg(long, value_name = "N", default_value_t = netc_runtime::sweep::DEFAULT_MAX_RUNS as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_runs: u64,
}

/// clap's parser for `--set`: a malformed argument is a usage error (exit code 2).
pub(super) fn parse_set(arg: &str) -> std::result::Result<netc_front::overrides::SetArg, String> {
    netc_front::overrides::SetArg::parse(arg).map_err(|e| {
        let help = miette::Diagnostic::help(&e).map(|h| format!("\n  help: {h}"));
        format!("{e}{}", help.unwrap_or_default())
    })
}

pub(super) fn sweep(args: SweepArgs) -> Result<ExitCode> {
    use netc_front::overrides;
    use netc_runtime::sweep::{self, Axis, PlannedRun, SweepOptions};

    // The size is known from the value counts alone, before any combination is built.
    let counts: Vec<usize> = args.set.iter().map(|s| s.values.len()).collect();
    let max_runs = usize::try_from(args.max_runs).unwrap_or(usize::MAX);
    sweep::check_grid_size(&counts, max_runs)?;
    let Some(base) = load_spec(&args.spec, &[])? else {
        return Ok(ExitCode::from(1));
    };
    let (source, program) = (&base.source.text, &base.program);
    let mut paths: Vec<String> = Vec::new();
    for set in &args.set {
        let full = overrides::resolve(source, &set.path)?;
        if paths.contains(&full) {
            return Err(overrides::OverrideError::Duplicate {
                what: "the parameter",
                item: full,
            }
            .into());
        }
        paths.push(full);
    }
    let axes: Vec<Axis> = sweep::column_names(&paths)
        .into_iter()
        .zip(paths)
        .zip(&args.set)
        .map(|((name, path), set)| Axis {
            name,
            path,
            values: set.values.clone(),
        })
        .collect();

    // Every combination is rewritten and checked before anything runs or is written. Each
    // distinct diagnostic is shown once, with the first combination that has it: one value's
    // lint would otherwise be repeated for every combination of the other parameters' values.
    let color = stderr_color();
    let key = |d: &diagnostics::Diag| (d.code.clone(), d.message.clone());
    let mut shown: std::collections::HashSet<(String, String)> =
        base.diags.iter().map(key).collect();
    let base_diags = shown.clone();
    let mut planned = Vec::new();
    let mut failed = 0;
    let mut repeats = 0;
    for combination in sweep::grid(&axes) {
        let text = overrides::apply_all(source, &combination.values)?;
        let compiled = netc_front::compile(&text);
        let fresh: Vec<diagnostics::Diag> = compiled
            .diags
            .iter()
            .filter(|d| shown.insert(key(d)))
            .cloned()
            .collect();
        if !fresh.is_empty() {
            let name = format!("{} [{}]", args.spec.display(), combination.label);
            eprint!(
                "{}",
                diagnostics::render(&name, &text, &fresh, DIAGNOSTIC_WIDTH, color)
            );
        } else if compiled.diags.iter().any(|d| !base_diags.contains(&key(d))) {
            repeats += 1;
        }
        if compiled.has_errors() {
            failed += 1;
        }
        planned.push(PlannedRun {
            combination,
            spec_text: text,
        });
    }
    if repeats > 0 {
        eprintln!(
            "{}: the diagnostics above also apply to {}",
            args.spec.display(),
            plural(repeats, "more combination")
        );
    }
    if failed > 0 {
        eprintln!(
            "{}: {} of {} combinations have errors; nothing was run",
            args.spec.display(),
            failed,
            planned.len()
        );
        return Ok(ExitCode::from(1));
    }

    let exe = std::env::current_exe().map_err(CliError::SweepExe)?;
    let backend = match args.common.backend() {
        BackendKind::Jit => "jit",
        BackendKind::Interp => "interp",
    };
    // The cores are shared among the runs that train at once.
    let threads = (args.common.threads.count() / (args.jobs as usize).max(1)).max(1);
    // Checked here, once, and passed on by name.
    let tier = args
        .common
        .threads
        .options_for(args.common.backend())?
        .tier
        .name();
    let epochs = args.epochs;
    // Each run is this binary's `netc run`, its summary as a JSON line on stdout.
    let launcher = sweep::Launcher::new(move |run: &sweep::RunRequest<'_>| {
        let mut command = std::process::Command::new(&exe);
        command
            .arg("run")
            .arg(run.spec)
            .args(["--json", "--quiet", "--backend", backend])
            .args(["--threads", &threads.to_string()])
            .args(["--tier", tier])
            .arg("--data")
            .arg(run.data)
            .arg("--out")
            .arg(run.out);
        if let Some(epochs) = epochs {
            command.args(["--epochs", &epochs.to_string()]);
        }
        command
    });
    let opts = SweepOptions {
        launcher,
        jobs: args.jobs as usize,
        data: Some(args.common.locate()?),
        out: args.out.clone(),
        model: program.name.clone(),
        interrupt: Some(install_sweep_interrupt_handler()?),
    };
    eprintln!(
        "sweeping {} of {}, {} at a time",
        plural(planned.len(), "combination"),
        args.spec.display(),
        opts.jobs.min(planned.len())
    );
    let progress = |done: usize, total: usize, row: &sweep::SweepRow| {
        let s = &row.summary;
        eprintln!(
            "[{done}/{total}] {}: best val acc {:.2}% at epoch {}, {:.1} s",
            row.combination.label,
            100.0 * s.best_val_acc,
            s.best_epoch,
            s.total_seconds
        );
    };
    let result = match sweep::sweep(&axes, &planned, &opts, &progress) {
        Err(sweep::SweepError::Interrupted {
            dir,
            stopped,
            finished,
            not_started,
        }) => {
            eprintln!(
                "the sweep was interrupted: {} stopped, {finished} finished, {not_started} not \
                 started (sweep directory {})",
                plural(stopped.len(), "run"),
                dir.display()
            );
            for run in &stopped {
                if run.resumable {
                    eprintln!(
                        "  {}: resume with `{} run --resume {}`",
                        run.label,
                        invocation(),
                        run.run_dir.display()
                    );
                } else {
                    eprintln!(
                        "  {}: stopped before its first checkpoint; its spec is {}",
                        run.label,
                        run.spec.display()
                    );
                }
            }
            if not_started > 0 {
                eprintln!(
                    "the specs of the runs not started are in {}",
                    dir.join(sweep::SPECS_DIR).display()
                );
            }
            return Ok(ExitCode::from(130));
        }
        other => other?,
    };
    println!("{}", result.table);
    println!("{}", sweep::best_line(&result));
    eprintln!(
        "wrote {}, {} and {}",
        result.table_path.display(),
        result.plot_path.display(),
        result.json_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Makes Ctrl-C, SIGTERM and SIGHUP stop a sweep: the sweep counts them and forwards each to the
/// runs in progress (the first makes them checkpoint and stop, a second stops them at once).
pub(super) fn install_sweep_interrupt_handler(
) -> Result<std::sync::Arc<std::sync::atomic::AtomicUsize>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    ctrlc::set_handler(move || {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!(
                "\ninterrupted: stopping the runs in progress, which write checkpoints, and \
                 starting no new ones (interrupt again to stop them at once)"
            );
        }
    })
    .map_err(|e| CliError::Signals(e.to_string()))?;
    Ok(count)
}
