//! `netc data fetch`.

use super::*;

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

/// clap's parser for `--md5`: a malformed checksum is a usage error (exit code 2).
pub(super) fn parse_md5(arg: &str) -> std::result::Result<String, String> {
    netc_runtime::fetch::parse_md5(arg).map_err(|e| {
        let help = miette::Diagnostic::help(&e).map(|h| format!("\n  help: {h}"));
        format!("{e}{}", help.unwrap_or_default())
    })
}

pub(super) fn data_fetch(args: FetchArgs) -> Result<ExitCode> {
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
