//! Downloading CIFAR-10: `netc data fetch`, and the fallback through which a command that finds
//! no data anywhere it looks downloads it into the cache dir (as Keras does).
//!
//! A download goes to `NAME.part` beside its final name, locked against a second netc, and its MD5
//! is computed while it streams. Only a complete file whose MD5 matches is synced and renamed to
//! `NAME`, so a file under the final name is always whole and verified. A dropped connection or a
//! stall keeps the `.part`, and the next fetch resumes it with an HTTP Range request (or starts
//! over when the server answers the whole file); a checksum mismatch deletes it. The `.part` is
//! only ever a regular file of netc's own, never written through a link. A download is bounded
//! in size (`max_bytes`, cut off and deleted beyond it) and in time: the answer's head must come
//! within the timeouts, and the body must keep up a minimum rate. Every failure is a
//! `FetchError` with a stable code. Where the data is looked for is `data`'s business; this
//! module never reads the data set.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

use crate::data::{self, DataError, DataSource, TARBALL_NAME};
use crate::progress::{Report, Task, TaskProgress, Unit};

/// The official binary version of CIFAR-10.
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// MD5 of the official `cifar-10-binary.tar.gz`, as published on the data set's home page.
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// Size of the official archive, for messages before the server has told us.
pub const CIFAR10_MEGABYTES: u64 = 162;
/// Size of the official archive in bytes.
pub const CIFAR10_BYTES: u64 = 170_052_171;
/// Default for `FetchOptions::max_bytes`: twice the official archive, room for a mirror's
/// recompressed copy, while a server that never stops sending is cut off at a third of a GB.
pub const DEFAULT_MAX_BYTES: u64 = 2 * CIFAR10_BYTES;
/// Slowest transfer netc waits for: over every `read_timeout`, the server must send at least this
/// many bytes per second on average. A trickle of a byte now and then resets no timer.
pub const MIN_BYTES_PER_SECOND: u64 = 1024;
/// Appended to the final name while a download is in progress.
pub const PART_SUFFIX: &str = ".part";
/// Default for connecting and for each wait on the server: long enough for a slow link, short
/// enough that a dead server is reported rather than waited on forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variable that, when set to anything but `0`/`false`/`no`/`off`/empty, forbids
/// commands to download missing data, as `--offline` does.
pub const OFFLINE_ENV: &str = "NETC_OFFLINE";

/// Bytes read from the network (and from a `.part` being resumed) at a time.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum FetchError {
    #[error("cannot reach {host}: {detail}")]
    #[diagnostic(
        code(netc::fetch::network),
        help(
            "this machine may be offline, or {host} may be down or blocked: check the connection \
             and run the command again, or name a mirror with --url URL (and its checksum with \
             --md5 HEX), or download the file some other way and pass it with --data"
        )
    )]
    Network {
        url: String,
        host: String,
        detail: String,
    },

    #[error("{host} {what} while {phase}")]
    #[diagnostic(code(netc::fetch::timeout))]
    Timeout {
        url: String,
        host: String,
        /// What the server did not do in time, e.g. "sent nothing for 30 s".
        what: String,
        phase: &'static str,
        #[help]
        help: String,
    },

    #[error("the download from {url} is too large: {detail}")]
    #[diagnostic(
        code(netc::fetch::too_large),
        help(
            "CIFAR-10's binary archive is {CIFAR10_BYTES} bytes: this URL serves another file, or \
             the server misbehaves. Nothing of it was kept; check --url"
        )
    )]
    TooLarge { url: String, detail: String },

    #[error("{} is a {what}, not a file netc created", part.display())]
    #[diagnostic(
        code(netc::fetch::unsafe_part),
        help(
            "netc writes a download only into a regular file of its own, never through a link: \
             delete {} and run the command again",
            part.display()
        )
    )]
    UnsafePart { part: PathBuf, what: &'static str },

    #[error("the download from {host} stopped after {received} of {} bytes: {detail}", expected_text(*.total))]
    #[diagnostic(
        code(netc::fetch::interrupted),
        help(
            "the {received} bytes received are kept in {}; run the same command again to resume \
             the download from there",
            part.display()
        )
    )]
    Interrupted {
        url: String,
        host: String,
        received: u64,
        total: Option<u64>,
        part: PathBuf,
        detail: String,
    },

    #[error("{url} answered HTTP {status} {reason}")]
    #[diagnostic(code(netc::fetch::http))]
    Http {
        url: String,
        status: u16,
        reason: String,
        #[help]
        help: String,
    },

    #[error("the file downloaded from {url} has MD5 {actual}; expected {expected}")]
    #[diagnostic(
        code(netc::fetch::checksum),
        help(
            "the file was damaged on the way, or this URL serves another file; the download ({}) \
             was deleted. Run the command again to download it anew, or check that --md5 is the \
             checksum of the file at --url",
            part.display()
        )
    )]
    Checksum {
        url: String,
        expected: String,
        actual: String,
        part: PathBuf,
    },

    #[error("{url} sent an answer netc cannot use: {detail}")]
    #[diagnostic(
        code(netc::fetch::bad_response),
        help("the server or a proxy on the way misbehaves; try again later, or name a mirror with --url")
    )]
    BadResponse { url: String, detail: String },

    #[error("`{url}` is not a URL netc can download from: {detail}")]
    #[diagnostic(
        code(netc::fetch::bad_url),
        help("pass an http:// or https:// URL, e.g. --url {CIFAR10_URL}")
    )]
    BadUrl { url: String, detail: String },

    #[error("`{given}` is not an MD5 checksum")]
    #[diagnostic(
        code(netc::fetch::bad_md5),
        help(
            "an MD5 checksum is 32 hexadecimal digits, e.g. {CIFAR10_MD5} (the official archive's)"
        )
    )]
    BadMd5 { given: String },

    #[error("cannot {action} {}: {source}", path.display())]
    #[diagnostic(code(netc::fetch::io))]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
        #[help]
        help: String,
    },

    #[error("another netc is already downloading into {}", part.display())]
    #[diagnostic(
        code(netc::fetch::busy),
        help("wait for it to finish: the file appears beside it, without `.part`, once its checksum is verified")
    )]
    Busy { part: PathBuf },

    #[error(
        "there is no cache directory to download into: neither XDG_CACHE_HOME nor HOME is set"
    )]
    #[diagnostic(
        code(netc::fetch::no_cache_dir),
        help("name the directory with --dir DIR")
    )]
    NoCacheDir,

    #[error(transparent)]
    #[diagnostic(transparent)]
    Data(#[from] DataError),
}

fn expected_text(total: Option<u64>) -> String {
    total.map_or_else(|| "an unknown number of".to_owned(), |t| t.to_string())
}

impl FetchError {
    /// A failed file operation on `path`, with advice chosen by the kind of failure.
    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let help = match source.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => format!(
                "the disk holding {} is full: free {CIFAR10_MEGABYTES} MB or so and run the \
                 command again (a partial download is kept and resumed), or choose another --dir",
                dir.display()
            ),
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => format!(
                "netc may not write in {}: make it writable, or choose another --dir",
                dir.display()
            ),
            io::ErrorKind::NotADirectory | io::ErrorKind::AlreadyExists => format!(
                "a file is in the way of the directory {}: move it, or choose another --dir",
                path.display()
            ),
            _ => format!(
                "check that {} is a writable directory on a healthy disk, or choose another --dir",
                dir.display()
            ),
        };
        FetchError::Io {
            action,
            path: path.to_path_buf(),
            source,
            help,
        }
    }
}

/// What to download, where to, and how long to wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchOptions {
    pub url: String,
    /// Expected MD5, 32 hex digits (either case).
    pub md5: String,
    /// The directory the file lands in, as `cifar-10-binary.tar.gz`; created when missing.
    pub dir: PathBuf,
    /// Longest wait for a connection to open.
    pub connect_timeout: Duration,
    /// Longest wait for any bytes from the server, before the answer and during it. Also bounds
    /// the transfer's progress: the answer's head must be complete within `connect_timeout +
    /// read_timeout`, and the body must bring `MIN_BYTES_PER_SECOND` on average over every
    /// `read_timeout`.
    pub read_timeout: Duration,
    /// Most bytes the file may have; a server that announces or sends more is cut off.
    pub max_bytes: u64,
    /// Where the download's progress goes (nothing by default).
    pub report: Report,
}

impl FetchOptions {
    /// The official archive into `dir`, with the default timeouts, reporting nothing.
    pub fn official(dir: PathBuf) -> Self {
        FetchOptions {
            url: CIFAR10_URL.to_owned(),
            md5: CIFAR10_MD5.to_owned(),
            dir,
            connect_timeout: DEFAULT_TIMEOUT,
            read_timeout: DEFAULT_TIMEOUT,
            max_bytes: DEFAULT_MAX_BYTES,
            report: Report::silent(),
        }
    }

    /// Where the verified file ends up.
    pub fn target(&self) -> PathBuf {
        self.dir.join(TARBALL_NAME)
    }

    /// Where the download is written until it is verified.
    pub fn part(&self) -> PathBuf {
        self.dir.join(format!("{TARBALL_NAME}{PART_SUFFIX}"))
    }
}

/// What `fetch` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The verified file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Bytes taken over from an earlier partial download (0 when it started from scratch).
    pub resumed_from: u64,
    /// The file was already in place with the right checksum, so nothing was downloaded.
    pub already_present: bool,
}

/// Checks and normalizes an MD5 checksum to 32 lowercase hex digits.
pub fn parse_md5(text: &str) -> Result<String, FetchError> {
    let t = text.trim();
    if t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err(FetchError::BadMd5 {
            given: text.to_owned(),
        })
    }
}

/// The MD5 of `bytes` as 32 lowercase hex digits.
pub fn md5_hex(bytes: &[u8]) -> String {
    hex(&Md5::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the value of `NETC_OFFLINE` asks commands not to download.
pub fn offline_value(value: Option<&OsStr>) -> bool {
    value.is_some_and(|v| {
        let v = v.to_string_lossy().trim().to_ascii_lowercase();
        !matches!(v.as_str(), "" | "0" | "false" | "no" | "off")
    })
}

/// Whether `NETC_OFFLINE` is set to forbid downloads.
pub fn offline_from_env() -> bool {
    offline_value(std::env::var_os(OFFLINE_ENV).as_deref())
}

/// Finds the data as `data::locate` does; when it is nowhere and the user neither named a place
/// (`explicit`, `NETC_DATA`) nor asked to stay offline (`offline`, `NETC_OFFLINE`), downloads the
/// official archive into the cache dir, calling `announce(looked, options)` first and reporting
/// the download's progress to `report`. Otherwise the answer is `data::locate`'s, including its
/// not-found error.
pub fn locate_or_fetch(
    explicit: Option<&Path>,
    offline: bool,
    report: &Report,
    announce: &mut dyn FnMut(&[PathBuf], &FetchOptions),
) -> Result<DataSource, FetchError> {
    let env = data::env_data();
    let cache = data::cache_dir();
    let roots = data::search_roots(
        explicit,
        env.as_deref(),
        Path::new("data"),
        cache.as_deref(),
    );
    let may_fetch = explicit.is_none() && env.is_none() && !offline && !offline_from_env();
    let fetch_options = cache.filter(|_| may_fetch).map(|dir| FetchOptions {
        report: report.clone(),
        ..FetchOptions::official(dir)
    });
    locate_or_fetch_in(&roots, fetch_options.as_ref(), announce)
}

/// `locate_or_fetch` with the roots and the download given: looks in `roots`, and downloads with
/// `fetch_options` when they hold nothing and a download is allowed (`Some`).
pub fn locate_or_fetch_in(
    roots: &[PathBuf],
    fetch_options: Option<&FetchOptions>,
    announce: &mut dyn FnMut(&[PathBuf], &FetchOptions),
) -> Result<DataSource, FetchError> {
    match (data::locate_in(roots), fetch_options) {
        (Err(DataError::NotFound { looked }), Some(opts)) => {
            announce(&looked, opts);
            let fetched = fetch(opts)?;
            Ok(DataSource::Tarball(fetched.path))
        }
        (located, _) => Ok(located?),
    }
}

/// Downloads `opts.url` to `opts.dir/cifar-10-binary.tar.gz`, resuming a `.part` left by an
/// earlier attempt, and verifies its MD5 before giving it its final name. A file already in place
/// with the right MD5 is kept and nothing is downloaded.
pub fn fetch(opts: &FetchOptions) -> Result<Fetched, FetchError> {
    let expected = parse_md5(&opts.md5)?;
    let target = opts.target();
    fs::create_dir_all(&opts.dir).map_err(|e| FetchError::io("create", &opts.dir, e))?;
    if target.is_file() {
        let (digest, bytes) = md5_of_file(&target)?;
        if digest == expected {
            return Ok(Fetched {
                path: target,
                bytes,
                resumed_from: 0,
                already_present: true,
            });
        }
    }
    let part_path = opts.part();
    let part = open_part(&part_path)?;
    let result = Download {
        opts,
        expected: &expected,
        part: &part,
        part_path: &part_path,
        target: &target,
    }
    .run();
    // An attempt that received nothing leaves nothing behind; anything received stays for the
    // next attempt, unless the attempt itself deleted it (a checksum mismatch).
    if result.is_err() && part.metadata().is_ok_and(|m| m.len() == 0) {
        fs::remove_file(&part_path).ok();
    }
    result
}

/// Opens (or creates) the `.part` and locks it, so two netc processes never write into it at once.
/// Only a regular file of its own is written: a new `.part` is created exclusively, an old one is
/// opened without following a symbolic link, and whatever was opened must be a regular file with
/// no other name (a hard link would write into a file elsewhere).
fn open_part(path: &Path) -> Result<File, FetchError> {
    let file = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| FetchError::io("create", path, e))?,
        Err(e) => return Err(FetchError::io("read", path, e)),
        Ok(meta) => {
            check_part_kind(path, &meta)?;
            let mut options = OpenOptions::new();
            options.read(true).write(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
            // A link put in place since the check fails to open (ELOOP), and anything else is
            // caught by checking what was opened.
            options
                .open(path)
                .map_err(|e| FetchError::io("open", path, e))?
        }
    };
    let meta = file
        .metadata()
        .map_err(|e| FetchError::io("read", path, e))?;
    check_part_kind(path, &meta)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(FetchError::Busy {
            part: path.to_path_buf(),
        }),
        // Some file systems cannot lock; downloading unlocked is better than not at all.
        Err(fs::TryLockError::Error(_)) => Ok(file),
    }
}

/// Refuses a `.part` that is not a regular file with one name.
fn check_part_kind(path: &Path, meta: &fs::Metadata) -> Result<(), FetchError> {
    let kind = meta.file_type();
    let what = if kind.is_symlink() {
        "symbolic link"
    } else if kind.is_dir() {
        "directory"
    } else if !kind.is_file() {
        "special file"
    } else if hard_links(meta) > 1 {
        "file with other names (hard links)"
    } else {
        return Ok(());
    };
    Err(FetchError::UnsafePart {
        part: path.to_path_buf(),
        what,
    })
}

#[cfg(unix)]
fn hard_links(meta: &fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::nlink(meta)
}

#[cfg(not(unix))]
fn hard_links(_meta: &fs::Metadata) -> u64 {
    1
}

/// The MD5 of a file and its size.
fn md5_of_file(path: &Path) -> Result<(String, u64), FetchError> {
    let mut file = File::open(path).map_err(|e| FetchError::io("read", path, e))?;
    let mut hasher = Md5::new();
    let bytes = hash_reader(&mut file, &mut hasher).map_err(|e| FetchError::io("read", path, e))?;
    Ok((hex(&hasher.finalize()), bytes))
}

fn hash_reader(reader: &mut impl Read, hasher: &mut Md5) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// How the server answered a request: where its body starts in the file, and the file's size
/// when it said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BodyPlacement {
    offset: u64,
    total: Option<u64>,
}

/// Parses `Content-Range: bytes FIRST-LAST/TOTAL` (TOTAL may be `*`).
fn parse_content_range(value: &str) -> Option<BodyPlacement> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    if last < first {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok().filter(|&t| t > last)?),
    };
    Some(BodyPlacement {
        offset: first,
        total,
    })
}

/// How streaming a body ended.
enum StreamEnd {
    Complete,
    Failed(io::Error),
    /// Too few bytes came over a whole window.
    TooSlow {
        bytes: u64,
    },
    /// The body would pass `max_bytes`.
    TooLarge,
}

/// The bytes received over consecutive windows of `window`, each of which must bring at least
/// `MIN_BYTES_PER_SECOND` on average.
struct ProgressWindow {
    window: Duration,
    needed: u64,
    started: Instant,
    bytes: u64,
}

impl ProgressWindow {
    fn new(window: Duration) -> Self {
        let needed = (MIN_BYTES_PER_SECOND as f64 * window.as_secs_f64()).ceil() as u64;
        ProgressWindow {
            window,
            needed: needed.max(1),
            started: Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `n` more bytes; at the end of a window, the bytes it brought when too few.
    fn too_slow(&mut self, n: u64) -> Option<u64> {
        self.bytes += n;
        if self.started.elapsed() < self.window {
            return None;
        }
        let bytes = std::mem::take(&mut self.bytes);
        self.started = Instant::now();
        (bytes < self.needed).then_some(bytes)
    }
}

/// One `fetch` once the `.part` is open and locked.
struct Download<'a> {
    opts: &'a FetchOptions,
    expected: &'a str,
    part: &'a File,
    part_path: &'a Path,
    target: &'a Path,
}

impl Download<'_> {
    fn run(&self) -> Result<Fetched, FetchError> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(self.opts.connect_timeout)
            .timeout_read(self.opts.read_timeout)
            .timeout_write(self.opts.read_timeout)
            .user_agent(concat!("netc/", env!("CARGO_PKG_VERSION")))
            .build();
        // A resume that the server answers oddly is retried once from scratch.
        let mut may_restart = true;
        loop {
            let have = self.part_len()?;
            let mut request = agent.get(&self.opts.url);
            if have > 0 {
                request = request.set("Range", &format!("bytes={have}-"));
            }
            let response = match self.call(request, have)? {
                Ok(r) => r,
                // 416: the `.part` is not a prefix of the file (it is already as long, or longer).
                Err(ureq::Error::Status(416, _)) if have > 0 && may_restart => {
                    self.truncate_part()?;
                    may_restart = false;
                    continue;
                }
                Err(e) => return Err(self.request_error(e, have)),
            };
            let placement = match self.placement(&response, have) {
                Some(p) => p,
                None if may_restart => {
                    self.truncate_part()?;
                    may_restart = false;
                    continue;
                }
                None => {
                    return Err(FetchError::BadResponse {
                        url: self.opts.url.clone(),
                        detail: format!(
                            "a partial answer (HTTP 206) whose Content-Range does not start at byte {have}"
                        ),
                    })
                }
            };
            if let Some(total) = placement.total.filter(|&t| t > self.opts.max_bytes) {
                self.truncate_part()?;
                return Err(self.too_large(format!(
                    "the server announces {total} bytes, and netc downloads at most {}",
                    self.opts.max_bytes
                )));
            }
            return self.receive(response, placement);
        }
    }

    /// Sends `request` and waits for the head of the answer. ureq bounds each read by the read
    /// timeout, but not the head as a whole, which a server sending a byte now and then could
    /// stretch over days; so the request runs on a helper thread, abandoned once the head has
    /// not come within the connect and read timeouts (it ends at ureq's next timeout or when
    /// the server closes, holding nothing of the download).
    fn call(
        &self,
        request: ureq::Request,
        have: u64,
    ) -> Result<Result<ureq::Response, ureq::Error>, FetchError> {
        let (answer, answered) = mpsc::sync_channel(1);
        thread::Builder::new()
            .name("netc-fetch-request".to_owned())
            .spawn(move || answer.send(request.call()).ok())
            .map_err(|e| FetchError::Network {
                url: self.opts.url.clone(),
                host: self.host(),
                detail: format!("cannot start a thread for the request: {e}"),
            })?;
        let deadline = self.opts.connect_timeout + self.opts.read_timeout;
        match answered.recv_timeout(deadline) {
            Ok(result) => Ok(result),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(self.timeout(
                "waiting for an answer",
                format!("sent no complete answer in {} s", deadline.as_secs().max(1)),
                have,
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(FetchError::BadResponse {
                url: self.opts.url.clone(),
                detail: "the HTTP client stopped without an answer".to_owned(),
            }),
        }
    }

    fn part_len(&self) -> Result<u64, FetchError> {
        self.part
            .metadata()
            .map(|m| m.len())
            .map_err(|e| FetchError::io("read", self.part_path, e))
    }

    fn truncate_part(&self) -> Result<(), FetchError> {
        self.part
            .set_len(0)
            .map_err(|e| FetchError::io("write", self.part_path, e))
    }

    /// Where the body goes: after the `.part`'s bytes for a 206 that continues them, at 0 for a
    /// whole file (a 200, which also restarts a resume the server did not honour). `None` for a
    /// 206 that does not continue the `.part`.
    fn placement(&self, response: &ureq::Response, have: u64) -> Option<BodyPlacement> {
        if response.status() == 206 {
            let placement = parse_content_range(response.header("Content-Range")?)?;
            return (placement.offset == have).then_some(placement);
        }
        let total = response
            .header("Content-Length")
            .and_then(|v| v.trim().parse().ok());
        Some(BodyPlacement { offset: 0, total })
    }

    /// Streams the body into the `.part` after `placement.offset` bytes, hashing as it goes, then
    /// verifies and renames.
    fn receive(
        &self,
        response: ureq::Response,
        placement: BodyPlacement,
    ) -> Result<Fetched, FetchError> {
        let mut hasher = Md5::new();
        let mut part = self.part;
        if placement.offset == 0 {
            self.truncate_part()?;
        } else {
            part.seek(SeekFrom::Start(0))
                .map_err(|e| FetchError::io("read", self.part_path, e))?;
            let mut prefix = part.take(placement.offset);
            let hashed = hash_reader(&mut prefix, &mut hasher)
                .map_err(|e| FetchError::io("read", self.part_path, e))?;
            if hashed != placement.offset {
                return Err(FetchError::io(
                    "read",
                    self.part_path,
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while resuming",
                    ),
                ));
            }
        }
        part.seek(SeekFrom::Start(placement.offset))
            .map_err(|e| FetchError::io("write", self.part_path, e))?;

        let bar = self.opts.report.task(Task {
            label: TARBALL_NAME.to_owned(),
            total: placement.total,
            done: placement.offset,
            unit: Unit::Bytes,
        });
        let streamed = self.stream(response.into_reader(), &mut hasher, placement, bar.as_ref());
        bar.finish();
        let received = streamed?;
        if let Some(total) = placement.total.filter(|&t| received < t) {
            return Err(self.interrupted(
                received,
                Some(total),
                "the server closed the connection early".to_owned(),
            ));
        }
        self.part
            .sync_all()
            .map_err(|e| FetchError::io("write", self.part_path, e))?;
        let actual = hex(&hasher.finalize());
        if actual != self.expected {
            fs::remove_file(self.part_path).ok();
            return Err(FetchError::Checksum {
                url: self.opts.url.clone(),
                expected: self.expected.to_owned(),
                actual,
                part: self.part_path.to_path_buf(),
            });
        }
        fs::rename(self.part_path, self.target)
            .map_err(|e| FetchError::io("rename the download to", self.target, e))?;
        // Syncing the directory makes the rename durable; some file systems refuse, and the file
        // is complete and in place by now, so that is not worth failing for.
        if let Ok(dir) = File::open(&self.opts.dir) {
            dir.sync_all().ok();
        }
        Ok(Fetched {
            path: self.target.to_path_buf(),
            bytes: received,
            resumed_from: placement.offset,
            already_present: false,
        })
    }

    /// Copies the body into the `.part`, returning the file's length afterwards. Whatever was
    /// received is flushed to the `.part` even when the connection fails or crawls, so it can be
    /// resumed; a body longer than `max_bytes` is cut off and the `.part` emptied (`fetch` then
    /// removes it), so that no later fetch resumes it.
    fn stream(
        &self,
        mut body: impl Read,
        hasher: &mut Md5,
        placement: BodyPlacement,
        bar: &dyn TaskProgress,
    ) -> Result<u64, FetchError> {
        let mut out = BufWriter::with_capacity(1 << 20, self.part);
        let mut buf = vec![0u8; CHUNK];
        let mut received = placement.offset;
        let mut progress = ProgressWindow::new(self.opts.read_timeout);
        let end = loop {
            match body.read(&mut buf) {
                Ok(0) => break StreamEnd::Complete,
                Ok(n) => {
                    if received + n as u64 > self.opts.max_bytes {
                        break StreamEnd::TooLarge;
                    }
                    out.write_all(&buf[..n])
                        .map_err(|e| FetchError::io("write", self.part_path, e))?;
                    hasher.update(&buf[..n]);
                    received += n as u64;
                    bar.set(received);
                    if let Some(bytes) = progress.too_slow(n as u64) {
                        break StreamEnd::TooSlow { bytes };
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break StreamEnd::Failed(e),
            }
        };
        out.flush()
            .map_err(|e| FetchError::io("write", self.part_path, e))?;
        match end {
            StreamEnd::Complete => Ok(received),
            StreamEnd::TooLarge => {
                self.truncate_part()?;
                Err(self.too_large(format!(
                    "the server sent more than {} bytes, the most netc downloads",
                    self.opts.max_bytes
                )))
            }
            StreamEnd::TooSlow { bytes } => Err(self.timeout(
                "receiving the file",
                format!(
                    "sent only {bytes} bytes in {} s (netc waits for at least \
                     {MIN_BYTES_PER_SECOND} bytes a second)",
                    self.opts.read_timeout.as_secs().max(1)
                ),
                received,
            )),
            StreamEnd::Failed(e) if is_timeout(&e) => {
                Err(self.timeout("receiving the file", self.sent_nothing(), received))
            }
            StreamEnd::Failed(e) => Err(self.interrupted(received, placement.total, e.to_string())),
        }
    }

    fn host(&self) -> String {
        host_of(&self.opts.url)
    }

    fn interrupted(&self, received: u64, total: Option<u64>, detail: String) -> FetchError {
        FetchError::Interrupted {
            url: self.opts.url.clone(),
            host: self.host(),
            received,
            total,
            part: self.part_path.to_path_buf(),
            detail,
        }
    }

    fn sent_nothing(&self) -> String {
        format!(
            "sent nothing for {} s",
            self.opts.read_timeout.as_secs().max(1)
        )
    }

    fn too_large(&self, detail: String) -> FetchError {
        FetchError::TooLarge {
            url: self.opts.url.clone(),
            detail,
        }
    }

    fn timeout(&self, phase: &'static str, what: String, received: u64) -> FetchError {
        let kept = if received > 0 {
            format!(
                "; the {received} bytes received are kept in {} and the download resumes from there",
                self.part_path.display()
            )
        } else {
            String::new()
        };
        FetchError::Timeout {
            url: self.opts.url.clone(),
            host: self.host(),
            what,
            phase,
            help: format!(
                "the server or the network stalled: run the command again{kept}, or name a mirror \
                 with --url URL (and its checksum with --md5 HEX)"
            ),
        }
    }

    /// Turns a failed request (no answer, or an error status) into a `FetchError`.
    fn request_error(&self, error: ureq::Error, have: u64) -> FetchError {
        let url = self.opts.url.clone();
        let transport = match error {
            ureq::Error::Status(status, response) => {
                return FetchError::Http {
                    help: status_help(status),
                    reason: response.status_text().to_owned(),
                    url,
                    status,
                };
            }
            ureq::Error::Transport(t) => t,
        };
        if io_source(&transport).is_some_and(is_timeout) {
            let phase = if transport.kind() == ureq::ErrorKind::ConnectionFailed {
                "connecting"
            } else {
                "waiting for an answer"
            };
            return self.timeout(phase, self.sent_nothing(), have);
        }
        let detail = transport_detail(&transport);
        match transport.kind() {
            ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme => {
                FetchError::BadUrl { url, detail }
            }
            ureq::ErrorKind::BadStatus
            | ureq::ErrorKind::BadHeader
            | ureq::ErrorKind::TooManyRedirects => FetchError::BadResponse { url, detail },
            _ => FetchError::Network {
                url,
                host: self.host(),
                detail,
            },
        }
    }
}

fn io_source(transport: &ureq::Transport) -> Option<&io::Error> {
    std::error::Error::source(transport)?.downcast_ref::<io::Error>()
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// ureq's message and the underlying error, without ureq's repetition of the URL.
fn transport_detail(transport: &ureq::Transport) -> String {
    let source = std::error::Error::source(transport).map(|s| s.to_string());
    match (transport.message(), source) {
        (Some(m), Some(s)) => format!("{m}: {s}"),
        (Some(m), None) => m.to_owned(),
        (None, Some(s)) => s,
        (None, None) => transport.kind().to_string(),
    }
}

fn status_help(status: u16) -> String {
    match status {
        404 | 410 => "there is no file at this URL: check --url".to_owned(),
        401 | 403 => {
            "the server refuses this download: check --url, or download the file some other way \
             and pass it with --data"
                .to_owned()
        }
        500..=599 => "the server failed: try again later, or name a mirror with --url".to_owned(),
        _ => "check --url, or download the file some other way and pass it with --data".to_owned(),
    }
}

/// The host of an http(s) URL, for messages; the whole URL when it has none.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        url.to_owned()
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use miette::Diagnostic;

    #[test]
    fn md5_matches_rfc_1321() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            md5_hex(
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            ),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
    }

    #[test]
    fn md5_checksums_are_validated_and_lowercased() {
        assert_eq!(
            parse_md5(" C32A1D4AB5D03F1284B67883E8D87530\n").unwrap(),
            CIFAR10_MD5
        );
        for bad in [
            "",
            "c32a1d4ab5d03f1284b67883e8d8753",
            "g32a1d4ab5d03f1284b67883e8d87530",
        ] {
            let err = parse_md5(bad).unwrap_err();
            assert_eq!(err.code().unwrap().to_string(), "netc::fetch::bad_md5");
        }
    }

    #[test]
    fn content_range_is_parsed_strictly() {
        let p = |offset, total| Some(BodyPlacement { offset, total });
        assert_eq!(
            parse_content_range("bytes 100-999/1000"),
            p(100, Some(1000))
        );
        assert_eq!(parse_content_range("bytes 0-0/1"), p(0, Some(1)));
        assert_eq!(parse_content_range("bytes 5-9/*"), p(5, None));
        for bad in [
            "bytes */1000",
            "items 1-2/3",
            "bytes 9-5/10",
            "bytes 0-9/9",
            "bytes 1-2",
            "bytes a-2/3",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn offline_values() {
        let on = |v: &str| offline_value(Some(OsStr::new(v)));
        assert!(on("1") && on("true") && on("YES"));
        assert!(!on("0") && !on("false") && !on("off") && !on(""));
        assert!(!offline_value(None));
    }

    #[test]
    fn hosts_are_taken_from_urls() {
        assert_eq!(host_of(CIFAR10_URL), "www.cs.toronto.edu");
        assert_eq!(host_of("http://127.0.0.1:8080/x?y"), "127.0.0.1:8080");
        assert_eq!(host_of("http://user@mirror.example/"), "mirror.example");
        assert_eq!(host_of("nonsense"), "nonsense");
    }

    #[test]
    fn a_directory_in_the_way_is_an_io_error_naming_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let mut opts = FetchOptions::official(file.join("sub"));
        // Never reached: creating the directory fails first.
        opts.url = "http://127.0.0.1:9/unused".to_owned();
        let err = fetch(&opts).unwrap_err();
        assert_eq!(err.code().unwrap().to_string(), "netc::fetch::io");
        assert!(
            err.to_string()
                .contains(&file.join("sub").display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_locked_part_is_busy() {
        let tmp = tempfile::tempdir().unwrap();
        let mut opts = FetchOptions::official(tmp.path().to_path_buf());
        opts.url = "http://127.0.0.1:9/unused".to_owned();
        let held = open_part(&opts.part()).unwrap();
        let err = fetch(&opts).unwrap_err();
        assert_eq!(err.code().unwrap().to_string(), "netc::fetch::busy");
        drop(held);
    }
}
