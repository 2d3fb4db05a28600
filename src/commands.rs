//! The verbs of `netc` and the flags they take.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use miette::{miette, Result};
use netc_diagnostics as diagnostics;
use netc_front::print;
use netc_ir::backend::{Backend, BackendError, InputStats, WHOLE_PHASE};
use netc_ir::ir::Program;
use netc_runtime::run::RunOptions;

#[derive(Parser, Debug)]
#[command(
    name = "netc",
    version,
    about = "Compile and train declarative deep-learning specs (.net files)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check specs and print their diagnostics (errors and lints).
    Check {
        /// The `.net` files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Compile a spec and print one of its intermediate forms.
    Compile {
        /// The `.net` spec to compile.
        file: PathBuf,
        /// What to print.
        #[arg(long, value_enum, default_value_t = Emit::Summary)]
        emit: Emit,
        /// Also print how long building the JIT kernels took.
        #[arg(long)]
        timings: bool,
        #[command(flatten)]
        threads: ThreadsArg,
    },
    /// Train a spec on CIFAR-10, evaluate it, and write a run directory.
    Run(RunArgs),
    /// Evaluate a finished run on the test set, with and without MC Dropout.
    Eval {
        /// A finished run's directory, as `netc run` wrote it (spec.net, summary.json and
        /// weights.safetensors).
        run_dir: PathBuf,
        /// MC Dropout samples (default: the spec's `mc_dropout`, else 10).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        mc: Option<u32>,
        #[command(flatten)]
        common: DataArgs,
    },
    /// Overlay the learning curves of several runs and tabulate them.
    Compare {
        /// Directories of finished runs, as `netc run` writes them (a sweep's runs are its
        /// subdirectories), each with summary.json and history.csv.
        #[arg(required = true)]
        run_dirs: Vec<PathBuf>,
        /// Where to write compare.md and compare.png.
        #[arg(long, default_value = "runs/compare")]
        out: PathBuf,
    },
    /// Learning-rate range test: grow the rate every step and watch the loss.
    LrFind(LrFindArgs),
    /// Time a spec's training step and inference on generated data of the real shape.
    Bench(BenchArgs),
    /// Train one run per combination of parameter values and tabulate them.
    Sweep(SweepArgs),
    /// Manage the CIFAR-10 data set.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Download CIFAR-10's binary version (162 MB) into the cache dir, verifying its MD5.
    Fetch(FetchArgs),
}

#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    /// Directory to put `cifar-10-binary.tar.gz` in (default: the cache dir, where every command
    /// looks for it).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where to download from: the official URL or a mirror's.
    #[arg(long, default_value = netc_runtime::fetch::CIFAR10_URL)]
    url: String,
    /// MD5 checksum of the file at --url (default: the official archive's).
    #[arg(long, default_value = netc_runtime::fetch::CIFAR10_MD5, value_parser = parse_md5)]
    md5: String,
    /// Seconds to wait for a connection, and for the server to send anything, before giving up;
    /// also the window over which the download must average at least 1 KiB/s.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    timeout: u64,
}

#[derive(clap::Args, Debug)]
pub struct DataArgs {
    /// CIFAR-10: the tarball, the `cifar-10-batches-bin` folder, or a folder holding either
    /// (default: $NETC_DATA, ./data, then the cache dir).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Which executor trains and evaluates [default: jit].
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    #[command(flatten)]
    threads: ThreadsArg,
    /// Never download: when no data is found, stop with an error (also NETC_OFFLINE=1).
    #[arg(long)]
    offline: bool,
}

impl DataArgs {
    /// The executor asked for; the JIT by default (faster per epoch than the interpreter, and
    /// checked against it).
    fn backend(&self) -> BackendKind {
        self.backend.unwrap_or(BackendKind::Jit)
    }

    /// Where this command's data is. This is the one place a command may download the data set:
    /// when it is nowhere and neither --data, NETC_DATA, --offline nor NETC_OFFLINE was given.
    fn locate(&self) -> Result<PathBuf> {
        let mut announce = |looked: &[PathBuf], opts: &netc_runtime::fetch::FetchOptions| {
            let places: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
            eprintln!(
                "CIFAR-10 not found (looked in {}); downloading it ({} MB) from {} into {}\n\
                 (pass --offline or set NETC_OFFLINE=1 to stop instead, or --data to use a copy)",
                places.join(", "),
                netc_runtime::fetch::CIFAR10_MEGABYTES,
                opts.url,
                opts.dir.display()
            );
        };
        // The download is announced, and its bar shown, even under --quiet: it is long and
        // not what was asked for.
        let source = netc_runtime::fetch::locate_or_fetch(
            self.data.as_deref(),
            self.offline,
            &crate::progress::stderr_report(false),
            &mut announce,
        )?;
        Ok(source.path().to_path_buf())
    }
}

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

#[derive(clap::Args, Debug)]
pub struct LrFindArgs {
    /// The `.net` spec to train from its initial weights while the rate grows.
    spec: PathBuf,
    #[command(flatten)]
    common: DataArgs,
    /// Smallest rate tried.
    #[arg(long, default_value_t = 1e-6)]
    min: f32,
    /// Largest rate tried.
    #[arg(long, default_value_t = 1.0)]
    max: f32,
    /// Steps from the smallest to the largest rate.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=100_000))]
    steps: u64,
    /// Where to write lr_find.png (default: runs/lr_find-<model>-<UTC time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the result as one JSON line on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The `.net` spec whose training step and inference to time.
    spec: PathBuf,
    /// Batch size (default: the spec's).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    batch: Option<u64>,
    /// Which executor to time.
    #[arg(long, value_enum, default_value_t = BackendKind::Jit)]
    backend: BackendKind,
    #[command(flatten)]
    threads: ThreadsArg,
    /// Training steps per timed repetition.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    steps: u64,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    repeats: u64,
    /// Print the report as one JSON line on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Kernels specialized for the spec, compiled with Cranelift.
    Jit,
    /// The ndarray reference executor (the oracle).
    Interp,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// The typed syntax tree, with spans.
    Ast,
    /// The IR the backends consume.
    Ir,
    /// A Keras-style table of layers, output shapes and parameter counts.
    Summary,
    /// The Cranelift IR of every kernel, for a fixed x86-64 ISA (stable across machines).
    Clif,
}

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { files } => check(&files),
        Command::Compile {
            file,
            emit,
            timings,
            threads,
        } => {
            let (compiled, ok) = front_end(&file)?;
            let (Some(program), true) = (compiled.program.as_ref(), ok) else {
                return Ok(ExitCode::from(1));
            };
            let text = match emit {
                Emit::Ast => compiled.ast.as_ref().map(print::ast).unwrap_or_default(),
                Emit::Ir => print::ir(program),
                Emit::Summary => print::summary(program),
                Emit::Clif => netc_jit::emit_clif(program)?,
            };
            print!("{text}");
            if timings {
                let threads = threads.count();
                let jit = netc_jit::Jit::with_threads(
                    program,
                    InputStats::placeholder(program),
                    threads,
                )?;
                eprintln!(
                    "compiled {} JIT kernels for {} in {:.1} ms",
                    jit.kernel_count(),
                    plural(threads, "thread"),
                    jit.compile_ms()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run(args),
        Command::Eval {
            run_dir,
            mc,
            common,
        } => eval(&run_dir, mc, &common),
        Command::Compare { run_dirs, out } => {
            let comparison = netc_runtime::compare::compare(&run_dirs, &out)?;
            println!("{}", comparison.table);
            eprintln!(
                "wrote {} and {}",
                comparison.table_path.display(),
                comparison.plot_path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::LrFind(args) => lr_find(args),
        Command::Bench(args) => bench(args),
        Command::Sweep(args) => sweep(args),
        Command::Data {
            command: DataCommand::Fetch(args),
        } => data_fetch(args),
    }
}

/// Checks every file, then says in one line on stderr how it went, so that a clean check does
/// not look like one that never ran.
fn check(files: &[PathBuf]) -> Result<ExitCode> {
    let (mut errors, mut warnings) = (0, 0);
    for file in files {
        let (compiled, ok) = front_end(file)?;
        let file_errors = compiled.diags.iter().filter(|d| d.is_error()).count();
        // A file that is not text has its error but no compiled diagnostics.
        errors += file_errors.max(usize::from(!ok));
        warnings += compiled.diags.len() - file_errors;
    }
    let verdict = if errors > 0 { "error" } else { "ok" };
    eprintln!(
        "{verdict}: {}, {}, {}",
        plural(files.len(), "file"),
        plural(errors, "error"),
        plural(warnings, "warning")
    );
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `--threads`, shared by every command that builds the JIT.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct ThreadsArg {
    /// Threads the JIT runs on [default: one per core; at most one per core]. Results do not
    /// depend on it. While other work keeps the cores busy, the JIT measures that its threads
    /// wait for each other and runs each phase on one thread until the load goes away.
    #[arg(long, env = "NETC_THREADS", value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: Option<u64>,
}

impl ThreadsArg {
    /// The flag, or one thread per core; never more threads than cores (they would only wait
    /// for each other's time slices: 256 threads on 2 cores made an epoch 60 times longer).
    fn count(self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        match self.threads {
            None => cores,
            Some(n) if n as usize > cores => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    eprintln!(
                        "warning: --threads {n} is more than the {} here; running on {cores} \
                         (threads beyond one per core only wait for each other)",
                        plural(cores, "core")
                    );
                });
                cores
            }
            Some(n) => n as usize,
        }
    }
}

/// Builds the executor the user asked for.
fn make_backend(
    kind: BackendKind,
    threads: usize,
    program: &Program,
    stats: Option<InputStats>,
) -> std::result::Result<Box<dyn Backend>, BackendError> {
    Ok(match kind {
        BackendKind::Jit => {
            let mut jit = netc_jit::Jit::with_threads(program, stats, threads)?;
            jit.set_dispatch(dispatch_override());
            Box::new(jit)
        }
        BackendKind::Interp => Box::new(netc_interp::Interp::new(program, stats)),
    })
}

/// `NETC_DISPATCH=pool` or `solo` fixes who runs the JIT's shares instead of measuring it
/// (`adaptive`, the default): for benchmarks of the adaptation itself. Anything else is the
/// default.
fn dispatch_override() -> netc_jit::Dispatch {
    use netc_jit::Dispatch;
    match std::env::var("NETC_DISPATCH").as_deref() {
        Ok("pool") => Dispatch::Pool,
        Ok("solo") => Dispatch::Solo,
        _ => Dispatch::Adaptive,
    }
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let interrupt = install_interrupt_handler()?;
    let checkpoint_every = usize::try_from(args.checkpoint_every).unwrap_or(usize::MAX);
    let result = match (&args.resume, &args.spec) {
        (Some(run_dir), _) => {
            netc_runtime::checkpoint::check_resumable(run_dir)?;
            let Some(program) = program_of(&run_dir.join(netc_runtime::run::SPEC_FILE))? else {
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
            let threads = args.common.threads.count();
            netc_runtime::run::resume(&program, run_dir, &opts, |p, stats, trained_with| {
                let kind = asked.unwrap_or(match trained_with {
                    "interp" => BackendKind::Interp,
                    _ => BackendKind::Jit,
                });
                make_backend(kind, threads, p, stats)
            })
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
            let threads = args.common.threads.count();
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
fn resume_data(common: &DataArgs, run_dir: &Path) -> Result<PathBuf> {
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
fn install_interrupt_handler() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
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
    .map_err(|e| {
        miette!(
            code = "netc::run::signals",
            "cannot install the interrupt handler: {e}"
        )
    })?;
    Ok(flag)
}

fn eval(run_dir: &Path, mc: Option<u32>, common: &DataArgs) -> Result<ExitCode> {
    let spec_path = run_dir.join(netc_runtime::run::SPEC_FILE);
    let summary =
        netc_runtime::report::read_summary(&run_dir.join(netc_runtime::run::SUMMARY_FILE))?;
    netc_runtime::run::check_spec_unchanged(run_dir, &summary)?;
    let Some(mut program) = program_of(&spec_path)? else {
        return Ok(ExitCode::from(1));
    };
    program.train.seed = summary.seed;
    let data = netc_runtime::data::load(Some(&common.locate()?))?;
    let (_, stats) = netc_runtime::run::split_and_stats(&program, &data.train)?;
    let mut backend = make_backend(common.backend(), common.threads.count(), &program, stats)?;
    let mut state = backend.state();
    state.params = netc_runtime::run::load_kept_weights(run_dir, &program)?;
    backend.set_state(&state);
    let samples = mc
        .map(|m| m as usize)
        .or(program.eval.mc_dropout)
        .unwrap_or(10);
    // Without dropout, every MC Dropout sample would be the pass with dropout off.
    let mc_samples = program.has_dropout().then_some(samples);
    let indices = data.test.all_indices();
    let e = netc_runtime::train::evaluate(
        backend.as_mut(),
        &data.test,
        &indices,
        program.input.classes,
        mc_samples,
        None,
    )?;
    let row = |name: &str, m: &netc_runtime::train::SetMetrics| {
        format!(
            "{name:<22} {:>9.2}% {:>10.4} {:>11.3} {:>10.3} {:>12.0}",
            m.accuracy * 100.0,
            m.loss,
            m.confidence,
            m.entropy,
            m.ms_per_10k
        )
    };
    println!(
        "test set: {} images, backend {}",
        e.standard.examples,
        backend.name()
    );
    println!(
        "{:<22} {:>10} {:>10} {:>11} {:>10} {:>12}",
        "", "accuracy", "loss", "confidence", "entropy", "ms/10k img"
    );
    println!("{}", row("dropout off", &e.standard));
    if let Some(mcd) = &e.mc_dropout {
        println!(
            "{}",
            row(
                &format!("MC Dropout ({} samples)", mcd.samples),
                &mcd.metrics
            )
        );
        println!(
            "MC Dropout costs {:.1}x the inference time of one pass",
            mcd.metrics.ms_per_10k / e.standard.ms_per_10k.max(1e-9)
        );
    }
    if !program.has_dropout() {
        eprintln!(
            "note: MC Dropout skipped: this model has no dropout layer, so every sample would be \
             the pass with dropout off"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn lr_find(args: LrFindArgs) -> Result<ExitCode> {
    use netc_runtime::lr_find::{self, LrFindOptions};
    if !(args.min > 0.0 && args.max > args.min && args.max.is_finite()) {
        return Err(miette!(
            code = "netc::lr_find::range",
            help = "pass rates with 0 < --min < --max, e.g. --min 1e-6 --max 1",
            "invalid learning-rate range [{}, {}]",
            args.min,
            args.max
        ));
    }
    let Some(LoadedSpec { program, .. }) = load_spec(&args.spec, &[])? else {
        return Ok(ExitCode::from(1));
    };
    let data = netc_runtime::data::load(Some(&args.common.locate()?))?;
    let (split, stats) = netc_runtime::run::split_and_stats(&program, &data.train)?;
    let threads = args.common.threads.count();
    let mut backend = make_backend(args.common.backend(), threads, &program, stats)?;
    let opts = LrFindOptions {
        min_lr: args.min,
        max_lr: args.max,
        steps: args.steps as usize,
        batch: program.train.batch,
        seed: program.train.seed,
        ..LrFindOptions::default()
    };
    let result = lr_find::lr_find(backend.as_mut(), &data.train, &split.train, &opts);
    let out = match args.out {
        Some(dir) => dir,
        None => netc_runtime::run::create_run_dir(None, &format!("lr_find-{}", program.name))?,
    };
    std::fs::create_dir_all(&out).map_err(|e| {
        miette!(
            code = "netc::io::write",
            "cannot create {}: {e}",
            out.display()
        )
    })?;
    let plot = out.join("lr_find.png");
    netc_runtime::plot::plot_lr_find(
        &plot,
        &result.lrs,
        &result.losses,
        &result.smoothed,
        result.suggested_lr,
    )?;
    eprintln!("{}", lr_find::reasoning(&result));
    eprintln!(
        "suggested learning rate: {:.2e} (the spec uses {:.2e}); plot: {}",
        result.suggested_lr,
        program.train.optimizer.lr,
        plot.display()
    );
    if args.json {
        let line = serde_json::json!({
            "spec": args.spec.display().to_string(),
            "suggested_lr": result.suggested_lr,
            "min_loss_lr": result.min_loss_lr,
            "steepest_lr": result.steepest_lr,
            "spec_lr": program.train.optimizer.lr,
            "steps": result.lrs.len(),
            "plot": plot.display().to_string(),
        });
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

fn bench(args: BenchArgs) -> Result<ExitCode> {
    // `--batch` is `--set train.batch=N`: the checker's memory estimate and lints see it.
    let overrides: Vec<(String, String)> = args
        .batch
        .map(|b| ("train.batch".to_string(), b.to_string()))
        .into_iter()
        .collect();
    let Some(LoadedSpec { program, .. }) = load_spec(&args.spec, &overrides)? else {
        return Ok(ExitCode::from(1));
    };
    let opts = netc_runtime::bench::BenchOptions {
        batch: None,
        steps: args.steps as usize,
        repeats: args.repeats as usize,
    };
    let spec = args.spec.display().to_string();
    let kind = args.backend;
    let threads = args.threads.count();
    let r = netc_runtime::bench::bench(
        &program,
        &spec,
        &opts,
        |p, s| make_backend(kind, threads, p, s),
        || netc_jit::fma_peak_gflops(PEAK_ITERATIONS, 5),
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&r).map_err(|e| miette!("cannot render the report: {e}"))?
        );
    } else {
        println!(
            "{} on {}, batch {}, {}",
            r.spec,
            r.backend,
            r.batch,
            plural(r.threads, "thread")
        );
        println!("  compile        {:>10.1} ms", r.compile_ms);
        println!(
            "  train step     {:>10.3} ms (median of {} runs of {} steps)",
            r.step_ms,
            r.step_ms_runs.len(),
            opts.steps
        );
        println!(
            "  epoch          {:>10.2} s  ({} images)",
            r.sec_per_epoch,
            netc_runtime::bench::EPOCH_IMAGES
        );
        println!(
            "  throughput     {:>10.1} GFLOP/s ({:.1} MFLOP per step)",
            r.gflops,
            r.flops_per_step / 1e6
        );
        println!(
            "  of peak        {:>10.1} %  (f32x4 FMA peak {:.1} GFLOP/s per core, measured)",
            r.peak_fraction * 100.0,
            r.peak_gflops_per_core
        );
        println!(
            "  predict        {:>10.0} ms per 10,000 images",
            r.predict_ms_per_10k
        );
        if r.solo_fraction > 0.0 {
            println!(
                "  one thread     {:>10.1} %  of the timed phases (the threads waited for each \
                 other: other work on the cores)",
                r.solo_fraction * 100.0
            );
        }
        if !r.calls.is_empty() {
            println!("  each call of a step on its own (median):");
            // A phase timed as a whole (several threads) has its total from that timing.
            let mut totals: Vec<(&str, f64, bool)> = Vec::new();
            for c in &r.calls {
                println!("    {:<10} {:<36} {:>8.3} ms", c.phase, c.kernel, c.ms);
                let whole = c.kernel.starts_with(WHOLE_PHASE);
                match totals.iter_mut().find(|t| t.0 == c.phase) {
                    Some(t) if whole => *t = (c.phase, c.ms, true),
                    Some(t) if !t.2 => t.1 += c.ms,
                    Some(_) => {}
                    None => totals.push((c.phase, c.ms, whole)),
                }
            }
            let line: Vec<String> = totals
                .iter()
                .map(|(p, ms, _)| format!("{p} {ms:.3} ms"))
                .collect();
            println!("    total: {}", line.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The program of a spec that compiled; `None` after its errors were printed.
fn program_of(path: &Path) -> Result<Option<Program>> {
    let (compiled, ok) = front_end(path)?;
    Ok(if ok { compiled.program } else { None })
}

/// Width diagnostics are wrapped at, on a terminal or not.
const DIAGNOSTIC_WIDTH: usize = 100;

/// Iterations of `netc bench`'s peak-calibration kernel: about 20 ms per run.
const PEAK_ITERATIONS: i64 = 10_000_000;

/// A spec file's bytes, reading at most one byte past `MAX_SOURCE_LEN` (a sparse file of
/// gigabytes or `/dev/urandom` costs a megabyte, not all of memory); a longer file is the
/// `syntax::too_large` diagnostic.
fn read_spec(path: &Path) -> Result<std::result::Result<Vec<u8>, netc_diagnostics::Diag>> {
    use netc_front::syntax::{too_large, MAX_SOURCE_LEN};
    use std::io::Read as _;
    let cannot_read = |e: std::io::Error| {
        miette!(
            code = "netc::io::read",
            help = "check the path; specs live in files like `specs/baseline.net`",
            "cannot read `{}`: {e}",
            path.display()
        )
    };
    let file = std::fs::File::open(path).map_err(cannot_read)?;
    let mut bytes = Vec::new();
    file.take(MAX_SOURCE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot_read)?;
    if bytes.len() <= MAX_SOURCE_LEN {
        return Ok(Ok(bytes));
    }
    let size = std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    Ok(Err(too_large(size)))
}

/// Reads and compiles a spec, printing its diagnostics to stderr. Returns the result and
/// whether it is free of errors.
pub fn front_end(path: &Path) -> Result<(netc_front::Compiled, bool)> {
    let Some(source) = read_source(path)? else {
        let compiled = netc_front::Compiled {
            ast: None,
            program: None,
            diags: Vec::new(),
        };
        return Ok((compiled, false));
    };
    Ok(compile_source(&source))
}

/// A spec as a command trains it: its file read once, the overrides applied to the text, and
/// the program the front end made of that text.
pub struct LoadedSpec {
    pub source: netc_runtime::run::SpecSource,
    pub program: Program,
    /// The warnings already printed.
    pub diags: Vec<diagnostics::Diag>,
}

/// Reads the spec at `path` once, applies `overrides` (`--set` pairs: `--epochs`, `--seed` and
/// `--batch` are such pairs) to its text, and compiles the result, printing its diagnostics, so
/// the checker's limits and lints see the spec as it will run. `None` once errors are printed.
pub fn load_spec(path: &Path, overrides: &[(String, String)]) -> Result<Option<LoadedSpec>> {
    let Some(mut source) = read_source(path)? else {
        return Ok(None);
    };
    if !overrides.is_empty() {
        source.text = netc_front::overrides::apply_all(&source.text, overrides)?;
    }
    let (compiled, ok) = compile_source(&source);
    let diags = compiled.diags;
    Ok(compiled.program.filter(|_| ok).map(|program| LoadedSpec {
        source,
        program,
        diags,
    }))
}

/// The text of the spec at `path`, read once; `None` after printing why there is none it can
/// show (too large, not UTF-8).
fn read_source(path: &Path) -> Result<Option<netc_runtime::run::SpecSource>> {
    let name = path.display().to_string();
    let color = stderr_color();
    let bytes = match read_spec(path)? {
        Ok(bytes) => bytes,
        Err(too_large) => {
            // Nothing of the file is shown: it may be megabytes of anything.
            eprint!(
                "{}",
                diagnostics::render(&name, "", &[too_large], DIAGNOSTIC_WIDTH, color)
            );
            return Ok(None);
        }
    };
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Some(netc_runtime::run::SpecSource { name, text })),
        Err(e) => {
            let bad = netc_front::decode(e.as_bytes()).expect_err("not UTF-8");
            eprint!(
                "{}",
                diagnostics::render(&name, &bad.lossy, &[bad.diag], DIAGNOSTIC_WIDTH, color)
            );
            Ok(None)
        }
    }
}

/// Compiles a spec's text, printing its diagnostics to stderr. Returns the result and whether
/// it is free of errors.
fn compile_source(source: &netc_runtime::run::SpecSource) -> (netc_front::Compiled, bool) {
    let name = &source.name;
    let compiled = netc_front::compile(&source.text);
    if !compiled.diags.is_empty() {
        eprint!(
            "{}",
            diagnostics::render(
                name,
                &source.text,
                &compiled.diags,
                DIAGNOSTIC_WIDTH,
                stderr_color()
            )
        );
        let errors = compiled.diags.iter().filter(|d| d.is_error()).count();
        let warnings = compiled.diags.len() - errors;
        if errors > 0 {
            eprintln!(
                "{name}: {} and {}",
                plural(errors, "error"),
                plural(warnings, "warning")
            );
        }
    }
    let ok = !compiled.has_errors();
    (compiled, ok)
}

/// Whether diagnostics on stderr get colour: on a terminal, unless `NO_COLOR` is set.
fn stderr_color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// How the user started netc, for the commands the hints print: `netc` when that is what the
/// shell finds on the PATH, else the path the binary was started by (`target/release/netc`), as
/// a shell word. Hints from the library's diagnostics say `netc ...`; `with_invocation` fixes them.
pub fn invocation() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let argv0 = std::env::args_os().next().map(PathBuf::from);
        invocation_of(argv0.as_deref(), std::env::var_os("PATH").as_deref())
    })
}

/// `invocation` for a given `argv[0]` and `PATH`.
fn invocation_of(argv0: Option<&Path>, path_var: Option<&std::ffi::OsStr>) -> String {
    let Some(argv0) = argv0.filter(|p| !p.as_os_str().is_empty()) else {
        return "netc".to_string();
    };
    // A bare name is what the shell looked up on the PATH.
    if argv0.components().count() == 1 && !argv0.has_root() {
        return shell_word(&argv0.to_string_lossy());
    }
    let on_path = path_var
        .into_iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("netc"))
        .find(|candidate| candidate.is_file());
    let same_file = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
    match on_path {
        Some(found) if same_file(&found, argv0) => "netc".to_string(),
        _ => shell_word(&argv0.to_string_lossy()),
    }
}

/// `text` as one word for a POSIX shell: as it is when it needs no quoting, else single-quoted.
fn shell_word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Rewrites the commands quoted in rendered diagnostics (`` `netc run --resume DIR` ``) to start
/// the way netc was started, so they can be pasted as they are.
pub fn with_invocation(rendered: &str) -> String {
    match invocation() {
        "netc" => rendered.to_string(),
        name => rendered.replace("`netc ", &format!("`{name} ")),
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

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
fn parse_set(arg: &str) -> std::result::Result<netc_front::overrides::SetArg, String> {
    netc_front::overrides::SetArg::parse(arg).map_err(|e| {
        let help = miette::Diagnostic::help(&e).map(|h| format!("\n  help: {h}"));
        format!("{e}{}", help.unwrap_or_default())
    })
}

fn sweep(args: SweepArgs) -> Result<ExitCode> {
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

    let exe = std::env::current_exe().map_err(|e| {
        miette!(
            code = "netc::sweep::exe",
            "cannot find the netc binary to run each combination: {e}"
        )
    })?;
    let opts = SweepOptions {
        exe,
        jobs: args.jobs as usize,
        epochs: args.epochs,
        data: Some(args.common.locate()?),
        backend: match args.common.backend() {
            BackendKind::Jit => "jit",
            BackendKind::Interp => "interp",
        }
        .to_string(),
        // The cores are shared among the runs that train at once.
        threads: (args.common.threads.count() / (args.jobs as usize).max(1)).max(1),
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
fn install_sweep_interrupt_handler() -> Result<std::sync::Arc<std::sync::atomic::AtomicUsize>> {
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
    .map_err(|e| {
        miette!(
            code = "netc::sweep::signals",
            "cannot install the interrupt handler: {e}"
        )
    })?;
    Ok(count)
}

/// clap's parser for `--md5`: a malformed checksum is a usage error (exit code 2).
fn parse_md5(arg: &str) -> std::result::Result<String, String> {
    netc_runtime::fetch::parse_md5(arg).map_err(|e| {
        let help = miette::Diagnostic::help(&e).map(|h| format!("\n  help: {h}"));
        format!("{e}{}", help.unwrap_or_default())
    })
}

fn data_fetch(args: FetchArgs) -> Result<ExitCode> {
    use netc_runtime::fetch::{self, FetchError, FetchOptions};
    let cache = netc_runtime::data::cache_dir();
    let dir = match args.dir.clone().or_else(|| cache.clone()) {
        Some(dir) => dir,
        None => return Err(FetchError::NoCacheDir.into()),
    };
    let timeout = std::time::Duration::from_secs(args.timeout);
    let opts = FetchOptions {
        url: args.url,
        md5: args.md5,
        dir,
        connect_timeout: timeout,
        read_timeout: timeout,
        max_bytes: fetch::DEFAULT_MAX_BYTES,
        report: crate::progress::stderr_report(false),
    };
    eprintln!("downloading {}\n  to {}", opts.url, opts.target().display());
    let fetched = fetch::fetch(&opts)?;
    let mb = fetched.bytes as f64 / 1e6;
    if fetched.already_present {
        eprintln!(
            "{} is already there and its MD5 matches; nothing to download",
            fetched.path.display()
        );
    } else if fetched.resumed_from > 0 {
        eprintln!(
            "saved {} ({mb:.1} MB, resumed after {:.1} MB), MD5 verified",
            fetched.path.display(),
            fetched.resumed_from as f64 / 1e6
        );
    } else {
        eprintln!(
            "saved {} ({mb:.1} MB), MD5 verified",
            fetched.path.display()
        );
    }
    // Commands search ./data and the cache dir; anywhere else they must be told.
    let found_by_default =
        [Some(Path::new("data")), cache.as_deref()].contains(&Some(opts.dir.as_path()));
    if !found_by_default {
        eprintln!(
            "commands look in ./data and the cache dir only: pass --data {} or set NETC_DATA to it",
            fetched.path.display()
        );
    }
    println!("{}", fetched.path.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_start_the_way_netc_was_started() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("netc"), "").unwrap();
        let other = tmp.path().join("target release");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("netc"), "").unwrap();
        let path_var = std::env::join_paths([&bin]).unwrap();
        let of = |argv0: &Path| invocation_of(Some(argv0), Some(&path_var));
        // Found on the PATH by the shell, or started by the path of what the PATH finds.
        assert_eq!(of(Path::new("netc")), "netc");
        assert_eq!(of(&bin.join("netc")), "netc");
        // Started by the path of another binary: that path, quoted for the shell.
        assert_eq!(
            of(&other.join("netc")),
            format!("'{}'", other.join("netc").display())
        );
        assert_eq!(
            invocation_of(Some(Path::new("target/release/netc")), None),
            "target/release/netc"
        );
        assert_eq!(invocation_of(None, None), "netc");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
    }
}
