//! The verbs of `netc` and the flags they take: the clap definitions and the dispatch here,
//! one file per command beside it, and what several commands share (`spec`, `hints`,
//! `make_backend`).

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use error::CliError;
use miette::Result;
use netc_diagnostics as diagnostics;
use netc_front::print;
use netc_ir::backend::{Backend, BackendError, InputStats, WHOLE_PHASE};
use netc_ir::ir::Program;
use netc_runtime::run::RunOptions;

mod bench;
mod check;
mod compare;
mod compile;
mod data;
mod error;
mod eval;
mod hints;
mod lr_find;
mod run;
mod spec;
mod sweep;

pub use hints::with_invocation;
use hints::{invocation, plural};
use spec::{
    compile_source, front_end, load_spec, read_source, stderr_color, LoadedSpec, DIAGNOSTIC_WIDTH,
};

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
        threads: JitArgs,
    },
    /// Train a spec on CIFAR-10, evaluate it, and write a run directory.
    Run(run::RunArgs),
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
    LrFind(lr_find::LrFindArgs),
    /// Time a spec's training step and inference on generated data of the real shape.
    Bench(bench::BenchArgs),
    /// Train one run per combination of parameter values and tabulate them.
    Sweep(sweep::SweepArgs),
    /// Manage the CIFAR-10 data set.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Download CIFAR-10's binary version (162 MB) into the cache dir, verifying its MD5.
    Fetch(data::FetchArgs),
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
    threads: JitArgs,
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
    /// The machine code of every kernel and GEMM at `--tier` (default: the widest here), for a
    /// fixed x86-64 ISA: the listing depends on the tier, not the machine.
    Asm,
}

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { files } => check::check(&files),
        Command::Compile {
            file,
            emit,
            timings,
            threads,
        } => compile::compile(&file, emit, timings, threads),
        Command::Run(args) => run::run(args),
        Command::Eval {
            run_dir,
            mc,
            common,
        } => eval::eval(&run_dir, mc, &common),
        Command::Compare { run_dirs, out } => compare::compare(&run_dirs, &out),
        Command::LrFind(args) => lr_find::lr_find(args),
        Command::Bench(args) => bench::bench(args),
        Command::Sweep(args) => sweep::sweep(args),
        Command::Data {
            command: DataCommand::Fetch(args),
        } => data::data_fetch(args),
    }
}

/// `--threads` and `--tier`, shared by every command that builds the JIT.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct JitArgs {
    /// Threads the JIT runs on [default: one per core; at most one per core]. Results do not
    /// depend on it. While other work keeps the cores busy, the JIT measures that its threads
    /// wait for each other and runs each phase on one thread until the load goes away.
    #[arg(long, env = "NETC_THREADS", value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: Option<u64>,
    /// The JIT's vector width for matrix multiplies [default: the widest this CPU has]. Results
    /// agree across tiers within rounding; forcing one is for benchmarks and tests.
    #[arg(long, env = "NETC_TIER", value_enum)]
    tier: Option<TierArg>,
}

/// A vector tier of the JIT (`netc_jit::Tier`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierArg {
    /// 128-bit vectors, Cranelift's code: the portable tier, on every CPU.
    F32x4,
    /// 256-bit vectors: generated AVX2 and FMA code.
    Avx2,
    /// 512-bit vectors: generated AVX-512 code.
    Avx512,
}

impl JitArgs {
    /// The tier asked for, whether or not this CPU has it; the widest here by default.
    fn tier_named(self) -> netc_jit::Tier {
        match self.tier {
            None => netc_jit::Tier::best(),
            Some(TierArg::F32x4) => netc_jit::Tier::F32x4,
            Some(TierArg::Avx2) => netc_jit::Tier::Avx2,
            Some(TierArg::Avx512) => netc_jit::Tier::Avx512,
        }
    }

    /// The options of `kind`'s executor: for the JIT, `options`; the interpreter has no tier,
    /// so one asked for (say in `NETC_TIER`) is not checked against this CPU.
    fn options_for(self, kind: BackendKind) -> std::result::Result<netc_jit::Options, CliError> {
        match kind {
            BackendKind::Jit => self.options(),
            BackendKind::Interp => Ok(netc_jit::Options {
                threads: self.count(),
                tier: netc_jit::Tier::F32x4,
                gradients: false,
            }),
        }
    }

    /// The JIT's options: `threads` (see `count`) and the tier asked for, which this CPU must
    /// have.
    fn options(self) -> std::result::Result<netc_jit::Options, CliError> {
        let tier = self.tier_named();
        if !tier.supported() {
            let have: Vec<&str> = netc_jit::Tier::available()
                .into_iter()
                .map(netc_jit::Tier::name)
                .collect();
            return Err(CliError::Tier {
                tier: tier.name(),
                have: have.join(", "),
            });
        }
        Ok(netc_jit::Options {
            threads: self.count(),
            tier,
            gradients: false,
        })
    }

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
    jit: netc_jit::Options,
    program: &Program,
    stats: Option<InputStats>,
) -> std::result::Result<Box<dyn Backend>, BackendError> {
    Ok(match kind {
        BackendKind::Jit => {
            let mut jit = netc_jit::Jit::with_options(program, stats, jit)?;
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
