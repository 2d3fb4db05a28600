//! `netc run`, and `netc run --resume`.

use super::*;

#[derive(clap::Args, Debug)]
#[command(mut_arg("backend", |a| a.help(
    "Which executor trains and evaluates [default: jit; when resuming, the run's]"
)))]
pub struct RunArgs {
    /// The spec to train (not with --resume, which trains the run's own copy).
    #[arg(required_unless_present = "resume")]
    spec: Option<PathBuf>,
    #[command(flatten)]
    common: DataArgs,
    /// Continue an interrupted run from its checkpoint, exactly where it stopped.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["spec", "seed", "out"])]
    resume: Option<PathBuf>,
    /// Write a checkpoint to RUN_DIR/checkpoint/ every N epochs and when training ends (0: only
    /// when interrupted).
    #[arg(long, value_name = "N", default_value_t = 1)]
    checkpoint_every: u64,
    /// Train this many epochs instead of the spec's. With --resume: extend the run, or, with
    /// no more than it has completed, end it now.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    epochs: Option<u64>,
    /// Override the spec's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Run directory (default: runs/<model>-<UTC time>); never overwritten.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the summary as one JSON line on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bars or per-epoch lines.
    #[arg(long, short)]
    quiet: bool,
}

pub(super) fn run(args: RunArgs) -> Result<ExitCode> {
    let interrupt = install_interrupt_handler()?;
    let checkpoint_every = usize::try_from(args.checkpoint_every).unwrap_or(usize::MAX);
    let result = match (&args.resume, &args.spec) {
        (Some(run_dir), _) => {
            netc_runtime::checkpoint::check_resumable(run_dir)?;
            let spec_path = run_dir.join(netc_runtime::run::SPEC_FILE);
            let Some(LoadedSpec {
                source, program, ..
            }) = load_spec(&spec_path, &[])?
            else {
                return Ok(ExitCode::from(1));
            };
            let opts = netc_runtime::run::ResumeOptions {
                data: Some(resume_data(&args.common, run_dir)?),
                epochs: args.epochs.map(|e| e as usize),
                report: crate::progress::stderr_report(args.quiet),
                checkpoint_every,
                interrupt: Some(interrupt),
            };
            let asked = args.common.backend;
            let threads = args
                .common
                .threads
                .options_for(asked.unwrap_or(BackendKind::Jit))?;
            netc_runtime::run::resume(
                &program,
                &source.text,
                run_dir,
                &opts,
                |p, stats, trained_with| {
                    let kind = asked.unwrap_or(match trained_with {
                        "interp" => BackendKind::Interp,
                        _ => BackendKind::Jit,
                    });
                    make_backend(kind, threads, p, stats)
                },
            )
        }
        (None, Some(spec)) => {
            // The flags are `--set` sugar: the checker sees, and the run directory keeps, the
            // spec as it trains.
            let mut overrides = Vec::new();
            if let Some(epochs) = args.epochs {
                overrides.push(("train.epochs".to_string(), epochs.to_string()));
            }
            if let Some(seed) = args.seed {
                overrides.push(("train.seed".to_string(), seed.to_string()));
            }
            let Some(LoadedSpec {
                source, program, ..
            }) = load_spec(spec, &overrides)?
            else {
                return Ok(ExitCode::from(1));
            };
            let opts = RunOptions {
                data: Some(args.common.locate()?),
                epochs: None,
                seed: None,
                out: args.out.clone(),
                report: crate::progress::stderr_report(args.quiet),
                checkpoint_every,
                interrupt: Some(interrupt),
            };
            let kind = args.common.backend();
            let threads = args.common.threads.options_for(kind)?;
            netc_runtime::run::run(&program, &source, &opts, |p, stats| {
                make_backend(kind, threads, p, stats)
            })
        }
        // clap requires one of the two.
        (None, None) => return Ok(ExitCode::from(2)),
    };
    let summary = match result {
        Err(netc_runtime::run::RunError::Interrupted(stopped)) => {
            eprintln!("{stopped}\n{}", with_invocation(&stopped.hint()));
            return Ok(ExitCode::from(130));
        }
        other => other?,
    };
    if !args.quiet {
        let dir = Path::new(&summary.run_dir);
        let history =
            netc_runtime::report::read_history_csv(&dir.join(netc_runtime::run::HISTORY_FILE))?;
        eprint!(
            "{}",
            netc_runtime::report::render_report(&summary, &history)
        );
    }
    if args.json {
        println!("{}", netc_runtime::report::summary_json_line(&summary)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a resumed run's data are: as for any command when --data or NETC_DATA says, else
/// where the run read them when it started, if they are still there.
pub(super) fn resume_data(common: &DataArgs, run_dir: &Path) -> Result<PathBuf> {
    if common.data.is_none() && netc_runtime::data::env_data().is_none() {
        let trainer = netc_runtime::checkpoint::read_trainer(run_dir)?;
        if let Some(path) = trainer.identity.data_path.filter(|p| p.exists()) {
            return Ok(path);
        }
    }
    common.locate()
}

/// Makes Ctrl-C, SIGTERM and SIGHUP ask training to stop after its current step and checkpoint;
/// a second one exits at once with status 130, as a shell reports a process killed by SIGINT.
pub(super) fn install_interrupt_handler() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let flag = std::sync::Arc::new(AtomicBool::new(false));
    let seen = flag.clone();
    ctrlc::set_handler(move || {
        if seen.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupted: finishing the current step and writing a checkpoint \
             (interrupt again to quit at once)"
        );
    })
    .map_err(|e| CliError::Signals(e.to_string()))?;
    Ok(flag)
}
