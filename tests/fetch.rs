//! Downloading CIFAR-10 (`netc_runtime::fetch` and `netc data fetch`) against HTTP servers that
//! these tests start on 127.0.0.1: a good one, one that drops the connection half-way, one that
//! ignores Range requests, one that answers 404, one that never answers, one that never stops
//! and ones that send a byte now and then. Also the `--offline`
//! path of the commands that need data. Nothing here reaches beyond 127.0.0.1, and every command
//! runs with HOME and XDG_CACHE_HOME in a temporary directory, so no real cache is touched.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use miette::Diagnostic;
use netc_runtime::data::{self, DataSource, SyntheticFormat, SyntheticSpec, TARBALL_NAME};
use netc_runtime::fetch::{self, FetchError, FetchOptions};

/// How the test server answers.
#[derive(Clone, Copy, Debug)]
struct Behaviour {
    /// Status of every answer: 200 (with 206 for Range requests when `honour_range`) or an error.
    status: u16,
    /// Answer Range requests with 206 and the rest of the file; otherwise always the whole file.
    honour_range: bool,
    /// The first answer announces the whole file but sends only this many bytes, then closes.
    drop_first_after: Option<usize>,
    /// Like `drop_first_after`, but the connection then stays open with nothing more sent.
    stall_first_after: Option<usize>,
    /// Accept connections, read the request, and never answer.
    silent: bool,
    /// Answer without Content-Length and send the file over and over, up to `ENDLESS_CAP`.
    endless: bool,
    /// Send the head of the answer a byte every `TRICKLE`.
    trickle_head: bool,
    /// Send the head at once, then the body a byte every `TRICKLE`.
    trickle_body: bool,
}

/// What an endless answer sends at most, so that a test of a client that never stops ends.
const ENDLESS_CAP: usize = 64 << 20;
/// Pause between the bytes of a trickling answer.
const TRICKLE: Duration = Duration::from_millis(200);

const GOOD: Behaviour = Behaviour {
    status: 200,
    honour_range: true,
    drop_first_after: None,
    stall_first_after: None,
    silent: false,
    endless: false,
    trickle_head: false,
    trickle_body: false,
};

/// An HTTP/1.1 server on 127.0.0.1 serving one file at every path, recording the Range header
/// of each request (`None` for a request without one). Stops when dropped.
struct TestServer {
    url: String,
    ranges: Arc<Mutex<Vec<Option<String>>>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start(body: Vec<u8>, behaviour: Behaviour) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local address");
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (Arc::clone(&ranges), Arc::clone(&stop));
        let thread = std::thread::spawn(move || serve(&listener, &body, behaviour, &r, &s));
        TestServer {
            url: format!("http://{addr}/{TARBALL_NAME}"),
            ranges,
            stop,
            addr,
            thread: Some(thread),
        }
    }

    fn ranges(&self) -> Vec<Option<String>> {
        self.ranges.lock().expect("lock").clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        TcpStream::connect(self.addr).ok();
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

fn serve(
    listener: &TcpListener,
    body: &[u8],
    behaviour: Behaviour,
    ranges: &Mutex<Vec<Option<String>>>,
    stop: &AtomicBool,
) {
    // Connections of the silent server are held open, unanswered, until the server stops.
    let mut held = Vec::new();
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut stream) = stream else { continue };
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let Some(range) = read_request(&stream) else {
            continue;
        };
        let first = {
            let mut r = ranges.lock().expect("lock");
            r.push(range.clone());
            r.len() == 1
        };
        if behaviour.silent {
            held.push(stream);
            continue;
        }
        answer(&mut stream, body, behaviour, range.as_deref(), first, stop).ok();
        if first && behaviour.stall_first_after.is_some() {
            held.push(stream);
            continue;
        }
        stream.shutdown(Shutdown::Both).ok();
    }
}

/// Reads a request's head; returns its Range header, or `None` inside when it has none.
fn read_request(stream: &TcpStream) -> Option<Option<String>> {
    let mut reader = BufReader::new(stream);
    let mut range = None;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            return Some(range);
        }
        if let Some((name, value)) = l.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_owned());
            }
        }
    }
}

fn answer(
    stream: &mut TcpStream,
    body: &[u8],
    behaviour: Behaviour,
    range: Option<&str>,
    first: bool,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    if behaviour.endless {
        write!(stream, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
        let mut sent = 0;
        while sent < ENDLESS_CAP && !stop.load(Ordering::SeqCst) {
            stream.write_all(body)?;
            sent += body.len();
        }
        return Ok(());
    }
    if behaviour.trickle_head || behaviour.trickle_body {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let (at_once, slowly) = if behaviour.trickle_head {
            (&b""[..], [head.as_bytes(), body].concat())
        } else {
            (head.as_bytes(), body.to_vec())
        };
        stream.write_all(at_once)?;
        for byte in slowly {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            stream.write_all(&[byte])?;
            std::thread::sleep(TRICKLE);
        }
        return Ok(());
    }
    if behaviour.status != 200 {
        let text = b"no such file";
        write!(
            stream,
            "HTTP/1.1 {} Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            behaviour.status,
            text.len()
        )?;
        return stream.write_all(text);
    }
    let from = range
        .filter(|_| behaviour.honour_range)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    let len = body.len();
    match from {
        Some(from) if from >= len => write!(
            stream,
            "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        Some(from) => {
            write!(
                stream,
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{len}\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                len - 1,
                len - from
            )?;
            stream.write_all(&body[from..])
        }
        None => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            )?;
            let cut = behaviour.drop_first_after.or(behaviour.stall_first_after);
            let sent = match cut {
                Some(n) if first => n.min(len),
                _ => len,
            };
            stream.write_all(&body[..sent])
        }
    }
}

/// A small generated data set as the tarball a mirror would serve.
fn tarball() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = SyntheticSpec {
        records_per_file: 20,
        seed: 3,
        format: SyntheticFormat::Tarball,
    };
    let path = data::write_synthetic(dir.path(), &spec).expect("synthetic data");
    std::fs::read(path).expect("read tarball")
}

fn options(server: &TestServer, dir: &Path, body: &[u8]) -> FetchOptions {
    FetchOptions {
        url: server.url.clone(),
        md5: fetch::md5_hex(body),
        dir: dir.to_path_buf(),
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(1),
        max_bytes: fetch::DEFAULT_MAX_BYTES,
        report: Default::default(),
    }
}

fn code(e: &FetchError) -> String {
    e.code().map(|c| c.to_string()).unwrap_or_default()
}

fn help(e: &FetchError) -> String {
    e.help().map(|h| h.to_string()).unwrap_or_default()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_download_is_verified_moved_into_place_and_loadable() {
    let body = tarball();
    let server = TestServer::start(body.clone(), GOOD);
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("cache").join("netc");
    let opts = options(&server, &dir, &body);
    let fetched = fetch::fetch(&opts).expect("fetch");
    assert_eq!(fetched.path, dir.join(TARBALL_NAME));
    assert_eq!(fetched.bytes, body.len() as u64);
    assert_eq!((fetched.resumed_from, fetched.already_present), (0, false));
    assert_eq!(entries(&dir), vec![TARBALL_NAME.to_owned()]);
    assert_eq!(std::fs::read(&fetched.path).expect("read"), body);
    let data = data::load_from(&DataSource::Tarball(fetched.path.clone())).expect("loadable");
    assert_eq!((data.train.len(), data.test.len()), (100, 20));
    assert_eq!(server.ranges(), vec![None]);

    // A second fetch checks the file in place and asks the server nothing.
    let again = fetch::fetch(&opts).expect("fetch again");
    assert!(again.already_present);
    assert_eq!(server.ranges().len(), 1);
}

#[test]
fn a_wrong_checksum_leaves_nothing_behind() {
    let body = tarball();
    let server = TestServer::start(body.clone(), GOOD);
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut opts = options(&server, tmp.path(), &body);
    opts.md5 = fetch::md5_hex(b"some other file");
    let err = fetch::fetch(&opts).expect_err("checksum mismatch");
    assert_eq!(code(&err), "netc::fetch::checksum");
    let text = err.to_string();
    assert!(text.contains(&opts.md5), "{text}");
    assert!(text.contains(&fetch::md5_hex(&body)), "{text}");
    assert!(help(&err).contains("deleted"), "{}", help(&err));
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}

#[test]
fn a_dropped_download_keeps_its_part_and_resumes_with_range() {
    let body = tarball();
    let half = body.len() / 2;
    let server = TestServer::start(
        body.clone(),
        Behaviour {
            drop_first_after: Some(half),
            ..GOOD
        },
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let opts = options(&server, tmp.path(), &body);
    let err = fetch::fetch(&opts).expect_err("the connection drops");
    assert_eq!(code(&err), "netc::fetch::interrupted");
    let part = opts.part();
    assert!(
        err.to_string()
            .contains(&format!("after {half} of {} bytes", body.len())),
        "{err}"
    );
    assert!(help(&err).contains(&part.display().to_string()));
    assert!(help(&err).contains("resume"), "{}", help(&err));
    assert!(!opts.target().exists(), "an incomplete file looks complete");
    assert_eq!(std::fs::read(&part).expect("part kept"), body[..half]);

    let fetched = fetch::fetch(&opts).expect("resume");
    assert_eq!(fetched.resumed_from, half as u64);
    assert_eq!(std::fs::read(&fetched.path).expect("read"), body);
    assert!(!part.exists());
    assert_eq!(server.ranges(), vec![None, Some(format!("bytes={half}-"))]);
}

#[test]
fn a_server_that_ignores_range_makes_a_clean_restart() {
    let body = tarball();
    let half = body.len() / 2;
    let server = TestServer::start(
        body.clone(),
        Behaviour {
            drop_first_after: Some(half),
            honour_range: false,
            ..GOOD
        },
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let opts = options(&server, tmp.path(), &body);
    fetch::fetch(&opts).expect_err("the connection drops");
    let fetched = fetch::fetch(&opts).expect("restart");
    assert_eq!(fetched.resumed_from, 0);
    assert_eq!(std::fs::read(&fetched.path).expect("read"), body);
    assert_eq!(server.ranges(), vec![None, Some(format!("bytes={half}-"))]);
}

#[test]
fn a_complete_part_is_downloaded_again_after_416() {
    let body = tarball();
    let server = TestServer::start(body.clone(), GOOD);
    let tmp = tempfile::tempdir().expect("temp dir");
    let opts = options(&server, tmp.path(), &body);
    // What a crash between the last byte and the rename leaves.
    std::fs::write(opts.part(), &body).expect("write part");
    let fetched = fetch::fetch(&opts).expect("fetch");
    assert_eq!(std::fs::read(&fetched.path).expect("read"), body);
    let len = body.len();
    assert_eq!(server.ranges(), vec![Some(format!("bytes={len}-")), None]);
}

#[test]
fn http_errors_name_the_status() {
    let body = tarball();
    let server = TestServer::start(
        body.clone(),
        Behaviour {
            status: 404,
            ..GOOD
        },
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let opts = options(&server, tmp.path(), &body);
    let err = fetch::fetch(&opts).expect_err("404");
    assert_eq!(code(&err), "netc::fetch::http");
    assert!(err.to_string().contains("HTTP 404"), "{err}");
    assert!(help(&err).contains("--url"), "{}", help(&err));
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}

#[test]
fn a_silent_server_is_a_timeout_not_a_hang() {
    let body = tarball();
    let server = TestServer::start(
        body.clone(),
        Behaviour {
            silent: true,
            ..GOOD
        },
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let opts = options(&server, tmp.path(), &body);
    let started = Instant::now();
    let err = fetch::fetch(&opts).expect_err("timeout");
    let waited = started.elapsed();
    assert_eq!(code(&err), "netc::fetch::timeout", "{err}");
    assert!(err.to_string().contains("sent nothing for 1 s"), "{err}");
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}

#[test]
fn a_stall_half_way_is_a_timeout_that_keeps_the_part() {
    let body = tarball();
    let third = body.len() / 3;
    let server = TestServer::start(
        body.clone(),
        Behaviour {
            stall_first_after: Some(third),
            ..GOOD
        },
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let opts = options(&server, tmp.path(), &body);
    let started = Instant::now();
    let err = fetch::fetch(&opts).expect_err("timeout");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(code(&err), "netc::fetch::timeout", "{err}");
    assert!(err.to_string().contains("while receiving"), "{err}");
    assert!(help(&err).contains(&opts.part().display().to_string()));
    assert_eq!(
        std::fs::read(opts.part()).expect("part kept"),
        body[..third]
    );
    let fetched = fetch::fetch(&opts).expect("resume");
    assert_eq!(fetched.resumed_from, third as u64);
    assert_eq!(std::fs::read(&fetched.path).expect("read"), body);
}

#[test]
fn a_body_without_length_is_cut_off_and_leaves_nothing_to_resume() {
    let body = tarball();
    let endless = TestServer::start(
        body.clone(),
        Behaviour {
            endless: true,
            ..GOOD
        },
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut opts = options(&endless, tmp.path(), &body);
    opts.max_bytes = 4 * body.len() as u64;
    let err = fetch::fetch(&opts).expect_err("too large");
    assert_eq!(code(&err), "netc::fetch::too_large", "{err}");
    assert!(
        err.to_string()
            .contains(&format!("more than {} bytes", opts.max_bytes)),
        "{err}"
    );
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));

    // The next fetch starts afresh rather than resuming the cut-off bytes.
    let good = TestServer::start(body.clone(), GOOD);
    opts.url = good.url.clone();
    let fetched = fetch::fetch(&opts).expect("fetch");
    assert_eq!(fetched.resumed_from, 0);
    assert_eq!(good.ranges(), vec![None]);
}

#[test]
fn an_announced_size_over_the_limit_is_refused_before_downloading() {
    let body = tarball();
    let server = TestServer::start(body.clone(), GOOD);
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut opts = options(&server, tmp.path(), &body);
    opts.max_bytes = body.len() as u64 - 1;
    let err = fetch::fetch(&opts).expect_err("too large");
    assert_eq!(code(&err), "netc::fetch::too_large", "{err}");
    assert!(
        err.to_string()
            .contains(&format!("announces {} bytes", body.len())),
        "{err}"
    );
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}

/// A small file, so that a client that waits for a trickle still ends within seconds.
const SMALL_BODY: &[u8] = b"forty bytes of a file that trickles in..";

#[test]
fn a_body_that_trickles_in_times_out() {
    let server = TestServer::start(
        SMALL_BODY.to_vec(),
        Behaviour {
            trickle_body: true,
            ..GOOD
        },
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let opts = options(&server, tmp.path(), SMALL_BODY);
    let started = Instant::now();
    let err = fetch::fetch(&opts).expect_err("too slow");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(code(&err), "netc::fetch::timeout", "{err}");
    assert!(err.to_string().contains("sent only"), "{err}");
    assert!(err.to_string().contains("while receiving"), "{err}");
    // What came is kept for a resume.
    let part = std::fs::read(opts.part()).expect("part kept");
    assert!(
        !part.is_empty() && SMALL_BODY.starts_with(&part),
        "{part:?}"
    );
}

#[test]
fn a_head_that_trickles_in_times_out() {
    let server = TestServer::start(
        SMALL_BODY.to_vec(),
        Behaviour {
            trickle_head: true,
            ..GOOD
        },
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let opts = options(&server, tmp.path(), SMALL_BODY);
    let started = Instant::now();
    let err = fetch::fetch(&opts).expect_err("too slow");
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(code(&err), "netc::fetch::timeout", "{err}");
    assert!(
        err.to_string().contains("sent no complete answer in 3 s"),
        "{err}"
    );
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}

#[cfg(unix)]
#[test]
fn a_part_that_links_elsewhere_is_never_written_through() {
    let body = tarball();
    let server = TestServer::start(body.clone(), GOOD);
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("cache");
    std::fs::create_dir(&dir).expect("mkdir");
    let outside = tmp.path().join("precious.txt");
    std::fs::write(&outside, b"precious").expect("write");
    let opts = options(&server, &dir, &body);

    std::os::unix::fs::symlink(&outside, opts.part()).expect("symlink");
    let err = fetch::fetch(&opts).expect_err("a link");
    assert_eq!(code(&err), "netc::fetch::unsafe_part", "{err}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(help(&err).contains("delete"), "{}", help(&err));
    assert_eq!(std::fs::read(&outside).expect("read"), b"precious");

    std::fs::remove_file(opts.part()).expect("remove link");
    std::fs::hard_link(&outside, opts.part()).expect("hard link");
    let err = fetch::fetch(&opts).expect_err("a hard link");
    assert_eq!(code(&err), "netc::fetch::unsafe_part", "{err}");
    assert_eq!(std::fs::read(&outside).expect("read"), b"precious");
    assert!(server.ranges().is_empty(), "{:?}", server.ranges());

    // Once the link is gone, the download goes ahead.
    std::fs::remove_file(opts.part()).expect("remove link");
    fetch::fetch(&opts).expect("fetch");
    assert_eq!(std::fs::read(&outside).expect("read"), b"precious");
}

#[test]
fn an_unreachable_server_is_a_network_error_naming_url() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut opts = FetchOptions::official(tmp.path().to_path_buf());
    opts.url = format!("http://127.0.0.1:{port}/{TARBALL_NAME}");
    let err = fetch::fetch(&opts).expect_err("nothing listens");
    assert_eq!(code(&err), "netc::fetch::network", "{err}");
    assert!(help(&err).contains("offline"), "{}", help(&err));
    assert!(help(&err).contains("--url"), "{}", help(&err));
    assert!(entries(tmp.path()).is_empty());
}

#[test]
fn locate_or_fetch_downloads_only_when_allowed_and_needed() {
    let body = tarball();
    let server = TestServer::start(body.clone(), GOOD);
    let tmp = tempfile::tempdir().expect("temp dir");
    let local = tmp.path().join("data");
    let cache = tmp.path().join("cache");
    let roots = vec![local, cache.clone()];
    let opts = options(&server, &cache, &body);
    let mut announced = Vec::new();

    let err = fetch::locate_or_fetch_in(&roots, None, &mut |l, _| announced.push(l.to_vec()))
        .expect_err("not allowed to fetch");
    assert_eq!(code(&err), "netc::data::not_found");
    assert!(announced.is_empty() && server.ranges().is_empty());

    let source =
        fetch::locate_or_fetch_in(&roots, Some(&opts), &mut |l, _| announced.push(l.to_vec()))
            .expect("fetched");
    assert_eq!(source, DataSource::Tarball(cache.join(TARBALL_NAME)));
    assert_eq!(announced.len(), 1);
    assert!(announced[0].contains(&roots[0]), "{announced:?}");

    // Found now: no second download and no announcement.
    let again =
        fetch::locate_or_fetch_in(&roots, Some(&opts), &mut |l, _| announced.push(l.to_vec()))
            .expect("found");
    assert_eq!(again, source);
    assert_eq!((announced.len(), server.ranges().len()), (1, 1));
}

/// Runs `netc` in `cwd` with a private HOME and cache dir and no NETC_DATA / NETC_OFFLINE.
fn netc(cwd: &Path, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netc"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env_remove("NETC_DATA")
        .env_remove("NETC_OFFLINE")
        .envs(env.iter().copied())
        .output()
        .expect("netc runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A spec that trains in a second on the served data (100 training images, 20 for validation).
const TINY_SPEC: &str = "model tiny\ninput cifar10 { standardize }\ndense 16 { activation: relu }\n\
    dense 10 { activation: softmax }\n\
    train {\n  optimizer: adam { lr: 1e-3 }\n  batch: 32\n  epochs: 1\n  validation: 20\n  seed: 1\n}\n";

/// Text with every run of whitespace made one space, so wrapped diagnostics can be searched.
fn unwrapped(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn spec_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("specs/baseline.net")
}

/// An environment variable and its value.
type Var<'a> = (&'a str, &'a str);

#[test]
fn offline_commands_without_data_say_where_they_looked_and_how_to_fetch() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let spec = spec_path();
    let spec = spec.to_str().expect("utf-8");
    let cases: [(&[&str], &[Var]); 3] = [
        (&["run", spec, "--offline", "--quiet"], &[]),
        (&["run", spec, "--quiet"], &[("NETC_OFFLINE", "1")]),
        (&["lr-find", spec, "--offline"], &[]),
    ];
    for (args, env) in cases {
        let o = netc(tmp.path(), tmp.path(), args, env);
        let err = unwrapped(&stderr(&o));
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("netc::data::not_found"), "{err}");
        // The binary is started by its path, not found on the PATH, and the hint says so.
        let hint = format!("run `{} data fetch`", env!("CARGO_BIN_EXE_netc"));
        assert!(err.contains(&hint), "{err}");
        // Neither place exists, so nothing inside them is listed.
        for looked in [PathBuf::from("data"), tmp.path().join("cache/netc")] {
            assert!(err.contains(&format!("- {} ", looked.display())), "{err}");
        }
        assert!(!err.contains("downloading"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_eq!(entries(tmp.path()), Vec::<String>::new());
}

#[test]
fn data_fetch_downloads_verifies_and_reports() {
    let body = tarball();
    let server = TestServer::start(body.clone(), GOOD);
    let tmp = tempfile::tempdir().expect("temp dir");
    let md5 = fetch::md5_hex(&body);
    let o = netc(
        tmp.path(),
        tmp.path(),
        &["data", "fetch", "--url", &server.url, "--md5", &md5],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let target = tmp.path().join("cache/netc").join(TARBALL_NAME);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        target.display().to_string()
    );
    assert_eq!(std::fs::read(&target).expect("read"), body);
    assert!(stderr(&o).contains("MD5 verified"), "{}", stderr(&o));

    // Commands now find it in the cache dir, offline.
    let spec = tmp.path().join("tiny.net");
    std::fs::write(&spec, TINY_SPEC).expect("write spec");
    let o = netc(
        tmp.path(),
        tmp.path(),
        &[
            "run",
            spec.to_str().expect("utf-8"),
            "--offline",
            "--quiet",
            "--json",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"test_acc\""));

    let dir = tmp.path().join("elsewhere");
    let d = dir.to_str().expect("utf-8");
    let wrong = fetch::md5_hex(b"another file");
    let o = netc(
        tmp.path(),
        tmp.path(),
        &[
            "data",
            "fetch",
            "--dir",
            d,
            "--url",
            &server.url,
            "--md5",
            &wrong,
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("netc::fetch::checksum"),
        "{}",
        stderr(&o)
    );
    assert!(entries(&dir).is_empty());

    let o = netc(
        tmp.path(),
        tmp.path(),
        &["data", "fetch", "--dir", d, "--md5", "not-hex"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("32 hexadecimal digits"),
        "{}",
        stderr(&o)
    );
}
