//! `netc bench`.

use super::*;

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
    threads: JitArgs,
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

/// Iterations of `netc bench`'s peak-calibration kernel: about 20 ms per run.
pub(super) const PEAK_ITERATIONS: i64 = 10_000_000;

pub(super) fn bench(args: BenchArgs) -> Result<ExitCode> {
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
        steps: args.steps as usize,
        repeats: args.repeats as usize,
    };
    let spec = args.spec.display().to_string();
    let kind = args.backend;
    let jit = args.threads.options_for(kind)?;
    let r = netc_runtime::bench::bench(
        &program,
        &spec,
        &opts,
        |p, s| make_backend(kind, jit, p, s),
        || tier_peaks(jit.tier),
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&r).map_err(CliError::Json)?);
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
            "  of peak        {:>10.1} %  ({} FMA peak {:.1} GFLOP/s per core, measured)",
            r.peak_fraction * 100.0,
            r.tier,
            r.peak_gflops_per_core
        );
        if r.tier_peaks.len() > 1 {
            let others: Vec<String> = r.tier_peaks[1..]
                .iter()
                .map(|p| format!("{} {:.1}", p.tier, p.gflops_per_core))
                .collect();
            println!(
                "  other tiers    {} GFLOP/s per core (FMA peaks; --tier runs one)",
                others.join(", ")
            );
        }
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

/// The FMA peak on one core of `first`, the tier the JIT's kernels run, then of each other tier
/// this CPU has.
fn tier_peaks(
    first: netc_jit::Tier,
) -> std::result::Result<Vec<netc_runtime::bench::TierPeak>, BackendError> {
    let others = netc_jit::Tier::available()
        .into_iter()
        .filter(|t| *t != first);
    std::iter::once(first)
        .chain(others)
        .map(|tier| {
            Ok(netc_runtime::bench::TierPeak {
                tier: tier.name().to_owned(),
                gflops_per_core: netc_jit::tier_peak_gflops(tier, PEAK_ITERATIONS, 5)?,
            })
        })
        .collect()
}
