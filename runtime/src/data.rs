//! CIFAR-10 in its official binary layout: finding it, reading it (from the extracted
//! `cifar-10-batches-bin` folder or straight from `cifar-10-binary.tar.gz`, streaming), validating
//! it, and slicing it into a validation split, shuffled epochs and batches. Also writes small
//! generated data sets in the same layout, so tests never need the real download.
//!
//! Pixels stay `u8` from disk to the backend: nothing here ever makes a float copy of the data
//! set, and splits and shuffles are index lists, so the real data set costs its 60,000 × 3,072
//! bytes once. Bad files are never a panic and never silently fewer images: every problem is a
//! `DataError` naming the file. An archive is read to the end of its gzip stream, so its CRC-32
//! is always checked, and what reading it may cost is bounded (`ArchiveLimits`), so a small
//! forged archive cannot make netc decompress or hold gigabytes.

use std::cell::Cell;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use netc_ir::backend::{Batch, InputStats};
use netc_ir::ir::{Planes, Preprocess, Program, StatsScope};
use netc_ir::rng::{purpose, SplitMix64};

use crate::report::atomic_write;

/// Bytes of one image: 1,024 red, then 1,024 green, then 1,024 blue values, each plane row-major.
pub const IMAGE_BYTES: usize = 3_072;
/// Bytes of one record on disk: the label byte, then the image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Records in every file of the official data set.
pub const RECORDS_PER_FILE: usize = 10_000;
pub const CLASSES: usize = 10;
pub const TARBALL_NAME: &str = "cifar-10-binary.tar.gz";
pub const FOLDER_NAME: &str = "cifar-10-batches-bin";
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub const TEST_FILE: &str = "test_batch.bin";
/// File that `write_synthetic` puts beside its batches to declare how many records each holds.
/// Without it, a file must hold exactly `RECORDS_PER_FILE` records, so a truncated real file is
/// always an error rather than a smaller data set.
pub const SYNTHETIC_MARKER: &str = "netc-synthetic.txt";
/// Key of the `SplitMix64` streams that generate synthetic images; distinct from the
/// `rng::purpose` constants so synthetic data never correlates with a split or a shuffle.
const SYNTHETIC_PURPOSE: u64 = 0x5359_4e54;

const HOW_TO_GET: &str = "run `netc data fetch` to download it (162 MB) into the cache dir; or \
download the binary version of CIFAR-10 (https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz) \
and put `cifar-10-binary.tar.gz` (or its extracted `cifar-10-batches-bin` folder) in ./data, or \
pass its path with --data, or set NETC_DATA to it";

/// What to do about an archive that cannot be CIFAR-10's.
const REDOWNLOAD: &str = "the file is damaged, incomplete or not CIFAR-10's binary archive: delete it \
and download it again (`netc data fetch` downloads the official archive and verifies its MD5), or use \
the extracted `cifar-10-batches-bin` folder";

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum DataError {
    #[error("CIFAR-10 data not found; looked in:\n{}", bullet_list(.looked))]
    #[diagnostic(code(netc::data::not_found), help("{HOW_TO_GET}"))]
    NotFound { looked: Vec<PathBuf> },

    #[error("cannot read {file}: {source}")]
    #[diagnostic(
        code(netc::data::unreadable),
        help("check that the file exists and that you may read it")
    )]
    Unreadable {
        file: String,
        #[source]
        source: io::Error,
    },

    #[error("{file} is not a regular file")]
    #[diagnostic(
        code(netc::data::not_a_file),
        help("this name must be a CIFAR-10 batch file, not a directory or a link; re-extract or re-download the data")
    )]
    NotAFile { file: String },

    #[error("{file} is missing")]
    #[diagnostic(
        code(netc::data::missing_file),
        help("the folder must hold data_batch_1.bin … data_batch_5.bin and test_batch.bin; re-extract the archive")
    )]
    MissingFile { file: String },

    #[error("{archive} lacks {}", .members.join(", "))]
    #[diagnostic(
        code(netc::data::missing_member),
        help("this is not a complete CIFAR-10 binary archive; re-download it")
    )]
    MissingMember {
        archive: String,
        members: Vec<String>,
    },

    #[error("{archive} holds {member} twice")]
    #[diagnostic(
        code(netc::data::duplicate_member),
        help("a CIFAR-10 archive holds each batch once; re-download it")
    )]
    DuplicateMember { archive: String, member: String },

    #[error("{file} is {bytes} bytes, not a whole number of {RECORD_BYTES}-byte records")]
    #[diagnostic(
        code(netc::data::bad_size),
        help("the file is truncated or not CIFAR-10's binary version (the Python and MATLAB versions use other formats)")
    )]
    BadSize { file: String, bytes: u64 },

    #[error("{file} holds {records} records; expected {expected}")]
    #[diagnostic(
        code(netc::data::record_count),
        help("every CIFAR-10 batch file holds 10,000 records; the file is truncated or from another data set")
    )]
    RecordCount {
        file: String,
        records: usize,
        expected: usize,
    },

    #[error("{file}: record {record} has label {label}; labels range over 0–9")]
    #[diagnostic(
        code(netc::data::bad_label),
        help(
            "the file is corrupt or not CIFAR-10 (CIFAR-100's binary version has two label bytes)"
        )
    )]
    BadLabel {
        file: String,
        record: usize,
        label: u8,
    },

    #[error("{archive} is corrupt or truncated (while reading {member}): {source}")]
    #[diagnostic(code(netc::data::corrupt_archive), help("{REDOWNLOAD}"))]
    CorruptArchive {
        archive: String,
        member: String,
        #[source]
        source: io::Error,
    },

    #[error("{archive} decompresses to more than {limit} bytes")]
    #[diagnostic(
        code(netc::data::archive_too_large),
        help("CIFAR-10's binary archive decompresses to 184,391,680 bytes, so this file is not it: {REDOWNLOAD}")
    )]
    ArchiveTooLarge { archive: String, limit: u64 },

    #[error("{archive} holds a {kind} of {bytes} bytes; netc reads at most {limit}")]
    #[diagnostic(
        code(netc::data::oversized_header),
        help("CIFAR-10's binary archive has no such header, so this file is not it: {REDOWNLOAD}")
    )]
    OversizedHeader {
        archive: String,
        kind: &'static str,
        bytes: u64,
        limit: u64,
    },

    #[error("{archive} holds {member} of {bytes} bytes; netc reads no member over {limit}")]
    #[diagnostic(
        code(netc::data::oversized_member),
        help("no file of CIFAR-10's binary archive is larger than a batch file ({limit} bytes), so this file is not it: {REDOWNLOAD}")
    )]
    OversizedMember {
        archive: String,
        member: String,
        bytes: u64,
        limit: u64,
    },

    #[error("{file} does not declare a valid record count: {reason}")]
    #[diagnostic(
        code(netc::data::bad_marker),
        help("this file is written by netc's synthetic data generator; delete the folder and generate it again")
    )]
    BadMarker { file: String, reason: String },

    #[error("a validation split of {validation} examples leaves no training examples out of {available}")]
    #[diagnostic(
        code(netc::data::validation_size),
        help("set `validation` in the spec's train block below the number of training examples")
    )]
    ValidationTooLarge { validation: usize, available: usize },

    #[error("{pixels} pixel bytes do not hold {labels} images of {features} features")]
    #[diagnostic(code(netc::data::shape))]
    Shape {
        pixels: usize,
        labels: usize,
        features: usize,
    },

    #[error("cannot write {file}: {source}")]
    #[diagnostic(code(netc::data::write))]
    Write {
        file: String,
        #[source]
        source: io::Error,
    },
}

fn bullet_list(paths: &[PathBuf]) -> String {
    let mut out = String::new();
    for (i, p) in paths.iter().enumerate() {
        let sep = if i == 0 { "" } else { "\n" };
        let _ = write!(out, "{sep}  - {}", p.display());
    }
    out
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// Where the data set lives once located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// A folder holding the six `.bin` files (normally `cifar-10-batches-bin`).
    Folder(PathBuf),
    /// `cifar-10-binary.tar.gz`, read without extracting it.
    Tarball(PathBuf),
}

impl DataSource {
    pub fn path(&self) -> &Path {
        match self {
            DataSource::Folder(p) | DataSource::Tarball(p) => p,
        }
    }
}

/// A set of labelled images, row-major `u8` pixels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Examples {
    features: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

impl Examples {
    /// Checks that `pixels` holds exactly `labels.len()` images of `features` bytes.
    pub fn from_parts(
        features: usize,
        pixels: Vec<u8>,
        labels: Vec<u8>,
    ) -> Result<Self, DataError> {
        if features == 0 || labels.len().checked_mul(features) != Some(pixels.len()) {
            return Err(DataError::Shape {
                pixels: pixels.len(),
                labels: labels.len(),
                features,
            });
        }
        Ok(Examples {
            features,
            pixels,
            labels,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn features(&self) -> usize {
        self.features
    }

    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The pixels of example `i` (panics when out of range, like slice indexing).
    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * self.features..(i + 1) * self.features]
    }

    /// `0..len` as indices, for evaluating a whole set.
    pub fn all_indices(&self) -> Vec<u32> {
        (0..self.labels.len() as u32).collect()
    }

    /// XXH64 (seed 0) of all the pixels: one pass at memory speed, so a checkpoint can tell
    /// other images under the same labels from the run's own for the price of a few
    /// milliseconds on the real training set.
    pub fn pixel_digest(&self) -> u64 {
        xxh64(&self.pixels)
    }

    /// Count of examples per class (labels at or above `classes` are not counted).
    pub fn class_counts(&self, classes: usize) -> Vec<usize> {
        let mut counts = vec![0; classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(usize::from(l)) {
                *c += 1;
            }
        }
        counts
    }
}

const XXH_PRIME_1: u64 = 0x9e37_79b1_85eb_ca87;
const XXH_PRIME_2: u64 = 0xc2b2_ae3d_27d4_eb4f;
const XXH_PRIME_3: u64 = 0x1656_67b1_9e37_79f9;
const XXH_PRIME_4: u64 = 0x85eb_ca77_c2b2_ae63;
const XXH_PRIME_5: u64 = 0x27d4_eb2f_1656_67c5;

fn xxh_round(acc: u64, lane: u64) -> u64 {
    acc.wrapping_add(lane.wrapping_mul(XXH_PRIME_2))
        .rotate_left(31)
        .wrapping_mul(XXH_PRIME_1)
}

fn xxh_merge(acc: u64, lane: u64) -> u64 {
    (acc ^ xxh_round(0, lane))
        .wrapping_mul(XXH_PRIME_1)
        .wrapping_add(XXH_PRIME_4)
}

fn le_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(std::array::from_fn(|i| bytes[i]))
}

/// XXH64 with seed 0, as specified by the xxHash project (and computed by `xxhsum -H64`): a
/// fingerprint stored in checkpoints, so its value must never change. Four independent lanes
/// keep the multipliers busy; a cryptographic hash would be several times slower.
fn xxh64(bytes: &[u8]) -> u64 {
    let stripes = bytes.chunks_exact(32);
    let tail = stripes.remainder();
    let mut hash = if bytes.len() >= 32 {
        let mut lanes = [
            XXH_PRIME_1.wrapping_add(XXH_PRIME_2),
            XXH_PRIME_2,
            0,
            XXH_PRIME_1.wrapping_neg(),
        ];
        for stripe in stripes {
            for (i, lane) in lanes.iter_mut().enumerate() {
                *lane = xxh_round(*lane, le_u64(&stripe[8 * i..]));
            }
        }
        let [a, b, c, d] = lanes;
        let mixed = a
            .rotate_left(1)
            .wrapping_add(b.rotate_left(7))
            .wrapping_add(c.rotate_left(12))
            .wrapping_add(d.rotate_left(18));
        lanes.iter().fold(mixed, |h, &lane| xxh_merge(h, lane))
    } else {
        XXH_PRIME_5
    };
    hash = hash.wrapping_add(bytes.len() as u64);
    let mut words = tail.chunks_exact(8);
    for word in &mut words {
        hash = (hash ^ xxh_round(0, le_u64(word)))
            .rotate_left(27)
            .wrapping_mul(XXH_PRIME_1)
            .wrapping_add(XXH_PRIME_4);
    }
    let mut rest = words.remainder();
    if rest.len() >= 4 {
        let half = u64::from(u32::from_le_bytes(std::array::from_fn(|i| rest[i])));
        hash = (hash ^ half.wrapping_mul(XXH_PRIME_1))
            .rotate_left(23)
            .wrapping_mul(XXH_PRIME_2)
            .wrapping_add(XXH_PRIME_3);
        rest = &rest[4..];
    }
    for &byte in rest {
        hash = (hash ^ u64::from(byte).wrapping_mul(XXH_PRIME_5))
            .rotate_left(11)
            .wrapping_mul(XXH_PRIME_1);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(XXH_PRIME_2);
    hash ^= hash >> 29;
    hash = hash.wrapping_mul(XXH_PRIME_3);
    hash ^ (hash >> 32)
}

/// CIFAR-10: 50,000 training images (the five data batches in order) and 10,000 test images.
#[derive(Clone, Debug)]
pub struct Cifar10 {
    pub train: Examples,
    pub test: Examples,
    pub source: DataSource,
}

/// Where `locate` looks, in order, given what the caller knows. Only the first root that is set
/// is searched: an explicit path or `NETC_DATA` is what the user asked for, so falling back to
/// some other copy of the data would hide their mistake.
pub fn search_roots(
    explicit: Option<&Path>,
    env_data: Option<&Path>,
    cwd_data: &Path,
    cache: Option<&Path>,
) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    if let Some(p) = env_data {
        return vec![p.to_path_buf()];
    }
    let mut roots = vec![cwd_data.to_path_buf()];
    roots.extend(cache.map(Path::to_path_buf));
    roots
}

/// The user's cache directory for netc: `$XDG_CACHE_HOME/netc`, else `~/.cache/netc`.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("XDG_CACHE_HOME") {
        Some(x) if !x.is_empty() => Some(PathBuf::from(x).join("netc")),
        _ => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".cache").join("netc")),
    }
}

/// `NETC_DATA`, when set to a path.
pub fn env_data() -> Option<PathBuf> {
    std::env::var_os("NETC_DATA")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Finds the data through `explicit`, else `NETC_DATA`, else `./data`, else the cache dir.
pub fn locate(explicit: Option<&Path>) -> Result<DataSource, DataError> {
    let env = env_data();
    let cache = cache_dir();
    let roots = search_roots(
        explicit,
        env.as_deref(),
        Path::new("data"),
        cache.as_deref(),
    );
    locate_in(&roots)
}

/// Finds the data under the first root that holds it. A root may be the tarball itself, a folder
/// holding the batch files, or a folder holding `cifar-10-batches-bin` or the tarball; the
/// extracted folder wins over the tarball because it loads faster.
pub fn locate_in(roots: &[PathBuf]) -> Result<DataSource, DataError> {
    let mut looked = Vec::new();
    for root in roots {
        if root.is_file() {
            return Ok(DataSource::Tarball(root.clone()));
        }
        looked.push(root.clone());
        if !root.is_dir() {
            continue;
        }
        if holds_batches(root) {
            return Ok(DataSource::Folder(root.clone()));
        }
        let folder = root.join(FOLDER_NAME);
        if folder.is_dir() {
            return Ok(DataSource::Folder(folder));
        }
        looked.push(folder);
        let tarball = root.join(TARBALL_NAME);
        if tarball.is_file() {
            return Ok(DataSource::Tarball(tarball));
        }
        looked.push(tarball);
    }
    Err(DataError::NotFound { looked })
}

fn holds_batches(dir: &Path) -> bool {
    TRAIN_FILES
        .iter()
        .chain([&TEST_FILE])
        .any(|f| dir.join(f).exists())
}

/// Locates and loads the data set.
pub fn load(explicit: Option<&Path>) -> Result<Cifar10, DataError> {
    load_from(&locate(explicit)?)
}

pub fn load_from(source: &DataSource) -> Result<Cifar10, DataError> {
    let files = match source {
        DataSource::Folder(dir) => read_folder(dir)?,
        DataSource::Tarball(path) => read_tarball(path)?,
    };
    files.assemble(source.clone())
}

/// One batch file's contents.
struct FileData {
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

/// The six batch files as read, indexed like `TRAIN_FILES` followed by `TEST_FILE`.
struct RawFiles {
    files: [Option<FileData>; 6],
    /// Display names of the files, for errors.
    names: [String; 6],
    /// Records each file must hold.
    expected: usize,
}

fn file_slot(name: &str) -> Option<usize> {
    TRAIN_FILES
        .iter()
        .chain([&TEST_FILE])
        .position(|f| *f == name)
}

fn file_name(slot: usize) -> &'static str {
    TRAIN_FILES.get(slot).copied().unwrap_or(TEST_FILE)
}

impl RawFiles {
    fn new(names: [String; 6]) -> Self {
        RawFiles {
            files: Default::default(),
            names,
            expected: RECORDS_PER_FILE,
        }
    }

    /// Checks the record counts and concatenates the training files. Each file is dropped as
    /// soon as it is copied, and the destination's untouched capacity costs no memory, so the
    /// peak stays near the size of the data set rather than twice it.
    fn assemble(self, source: DataSource) -> Result<Cifar10, DataError> {
        let RawFiles {
            files,
            names,
            expected,
        } = self;
        for (file, name) in files.iter().zip(&names) {
            if let Some(f) = file {
                if f.labels.len() != expected {
                    return Err(DataError::RecordCount {
                        file: name.clone(),
                        records: f.labels.len(),
                        expected,
                    });
                }
            }
        }
        let [b1, b2, b3, b4, b5, test] = files;
        let train_files = [b1, b2, b3, b4, b5];
        let total: usize = train_files.iter().flatten().map(|f| f.labels.len()).sum();
        let mut pixels = Vec::with_capacity(total * IMAGE_BYTES);
        let mut labels = Vec::with_capacity(total);
        for (i, file) in train_files.into_iter().enumerate() {
            let file = file.ok_or_else(|| DataError::MissingFile {
                file: names[i].clone(),
            })?;
            pixels.extend_from_slice(&file.pixels);
            labels.extend_from_slice(&file.labels);
        }
        let test = test.ok_or_else(|| DataError::MissingFile {
            file: names[5].clone(),
        })?;
        Ok(Cifar10 {
            train: Examples::from_parts(IMAGE_BYTES, pixels, labels)?,
            test: Examples::from_parts(IMAGE_BYTES, test.pixels, test.labels)?,
            source,
        })
    }
}

/// Number of records in a file of `bytes` bytes, or the error for a bad size. A file may never
/// exceed `RECORDS_PER_FILE` records, which also bounds what a forged tar header can make us
/// allocate.
fn record_count(file: &str, bytes: u64) -> Result<usize, DataError> {
    if !bytes.is_multiple_of(RECORD_BYTES as u64) {
        return Err(DataError::BadSize {
            file: file.to_owned(),
            bytes,
        });
    }
    let records = bytes / RECORD_BYTES as u64;
    match usize::try_from(records) {
        Ok(r) if r <= RECORDS_PER_FILE => Ok(r),
        _ => Err(DataError::RecordCount {
            file: file.to_owned(),
            records: usize::try_from(records).unwrap_or(usize::MAX),
            expected: RECORDS_PER_FILE,
        }),
    }
}

/// Why reading records stopped: the reader failed, or a label was out of range.
enum ReadFailure {
    Io(io::Error),
    Label { record: usize, label: u8 },
}

fn read_records(reader: &mut impl Read, records: usize) -> Result<FileData, ReadFailure> {
    let mut pixels = vec![0u8; records * IMAGE_BYTES];
    let mut labels = Vec::with_capacity(records);
    for (record, image) in pixels.chunks_exact_mut(IMAGE_BYTES).enumerate() {
        let mut label = [0u8; 1];
        reader.read_exact(&mut label).map_err(ReadFailure::Io)?;
        if usize::from(label[0]) >= CLASSES {
            return Err(ReadFailure::Label {
                record,
                label: label[0],
            });
        }
        labels.push(label[0]);
        reader.read_exact(image).map_err(ReadFailure::Io)?;
    }
    Ok(FileData { pixels, labels })
}

fn read_marker(file: &str, text: &str) -> Result<usize, DataError> {
    let bad = |reason: &str| DataError::BadMarker {
        file: file.to_owned(),
        reason: reason.to_owned(),
    };
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("records_per_file"))
        .ok_or_else(|| bad("no `records_per_file` line"))?;
    let n: usize = value
        .trim()
        .parse()
        .map_err(|_| bad("`records_per_file` is not a number"))?;
    if n == 0 || n > RECORDS_PER_FILE {
        return Err(bad("`records_per_file` must lie in 1..=10000"));
    }
    Ok(n)
}

fn read_folder(dir: &Path) -> Result<RawFiles, DataError> {
    let names: [String; 6] = std::array::from_fn(|i| shown(&dir.join(file_name(i))));
    let mut raw = RawFiles::new(names);
    let marker = dir.join(SYNTHETIC_MARKER);
    if marker.exists() {
        let text = fs::read_to_string(&marker).map_err(|source| DataError::Unreadable {
            file: shown(&marker),
            source,
        })?;
        raw.expected = read_marker(&shown(&marker), &text)?;
    }
    for slot in 0..6 {
        let path = dir.join(file_name(slot));
        let name = raw.names[slot].clone();
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DataError::MissingFile { file: name })
            }
            Err(source) => return Err(DataError::Unreadable { file: name, source }),
        };
        if !meta.is_file() {
            return Err(DataError::NotAFile { file: name });
        }
        let records = record_count(&name, meta.len())?;
        if records != raw.expected {
            return Err(DataError::RecordCount {
                file: name,
                records,
                expected: raw.expected,
            });
        }
        let unreadable = |source| DataError::Unreadable {
            file: name.clone(),
            source,
        };
        let file = File::open(&path).map_err(unreadable)?;
        let data = read_records(&mut BufReader::with_capacity(1 << 16, file), records).map_err(
            |failure| match failure {
                ReadFailure::Io(source) => unreadable(source),
                ReadFailure::Label { record, label } => DataError::BadLabel {
                    file: name.clone(),
                    record,
                    label,
                },
            },
        )?;
        raw.files[slot] = Some(data);
    }
    Ok(raw)
}

fn read_tarball(path: &Path) -> Result<RawFiles, DataError> {
    let archive_name = shown(path);
    let meta = fs::metadata(path).map_err(|source| DataError::Unreadable {
        file: archive_name.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(DataError::NotAFile { file: archive_name });
    }
    let file = File::open(path).map_err(|source| DataError::Unreadable {
        file: archive_name.clone(),
        source,
    })?;
    read_archive(
        BufReader::with_capacity(1 << 16, file),
        &archive_name,
        ArchiveLimits::CIFAR10,
    )
}

/// Bounds on what reading an archive may cost, so that a small forged file cannot make netc
/// decompress or hold gigabytes.
#[derive(Clone, Copy, Debug)]
struct ArchiveLimits {
    /// Bytes the gzip stream may decompress to, tar padding included.
    decompressed: u64,
    /// Bytes of a GNU long-name or long-link entry, or of a PAX header.
    header_entry: u64,
    /// Bytes of any other member.
    member: u64,
}

impl ArchiveLimits {
    /// The official archive decompresses to 184,391,680 bytes, its largest members are the batch
    /// files, and it has no extension headers at all; a path of a few KiB is already absurd.
    const CIFAR10: ArchiveLimits = ArchiveLimits {
        decompressed: 256 << 20,
        header_entry: 16 << 10,
        member: (RECORDS_PER_FILE * RECORD_BYTES) as u64,
    };
}

/// The decompressed stream, failing once it passes `limit` bytes. The failure is also recorded
/// in `exceeded`, because `tar` may pass it on as some other error.
struct CappedReader<R> {
    inner: R,
    read: u64,
    limit: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.limit - self.read;
        if room == 0 {
            // At the limit, only the end of the stream is still acceptable.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.exceeded.set(true);
            return Err(io::Error::other(format!(
                "the archive decompresses to more than {} bytes",
                self.limit
            )));
        }
        let len = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..len])?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Reads the members of a gzip-compressed tar, then the gzip stream to its very end: `tar` stops
/// at its end-of-archive block, before the trailer that holds the gzip CRC-32 and length, and a
/// damaged archive often decompresses without any other complaint. Streams of several gzip
/// members (which `gzip` and `tar` accept) are read as one.
fn read_archive(
    compressed: impl Read,
    archive_name: &str,
    limits: ArchiveLimits,
) -> Result<RawFiles, DataError> {
    let exceeded = Rc::new(Cell::new(false));
    let failed = |member: &str, source: io::Error| {
        if exceeded.get() {
            DataError::ArchiveTooLarge {
                archive: archive_name.to_owned(),
                limit: limits.decompressed,
            }
        } else {
            DataError::CorruptArchive {
                archive: archive_name.to_owned(),
                member: member.to_owned(),
                source,
            }
        }
    };
    let mut archive = tar::Archive::new(CappedReader {
        inner: MultiGzDecoder::new(compressed),
        read: 0,
        limit: limits.decompressed,
        exceeded: Rc::clone(&exceeded),
    });
    let members = read_members(&mut archive, archive_name, limits, &failed);
    if let Err(
        DataError::CorruptArchive { .. }
        | DataError::ArchiveTooLarge { .. }
        | DataError::OversizedHeader { .. }
        | DataError::OversizedMember { .. },
    ) = &members
    {
        return members;
    }
    // Whatever the members held, a stream that fails its checksum is corrupt, and that is the
    // better explanation of a bad label or a short file found inside it.
    io::copy(&mut archive.into_inner(), &mut io::sink())
        .map_err(|e| failed("the rest of the gzip stream", e))?;
    members
}

/// Entry types whose data describe the next member rather than being one.
fn header_entry_kind(kind: tar::EntryType) -> Option<&'static str> {
    if kind.is_gnu_longname() {
        Some("GNU long-name entry")
    } else if kind.is_gnu_longlink() {
        Some("GNU long-link entry")
    } else if kind.is_pax_local_extensions() {
        Some("PAX header")
    } else if kind.is_pax_global_extensions() {
        Some("PAX global header")
    } else {
        None
    }
}

/// The name a GNU long-name entry or a PAX header gives the member after it.
fn extended_name(kind: tar::EntryType, data: &[u8]) -> io::Result<Option<Vec<u8>>> {
    if kind.is_gnu_longname() {
        let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
        return Ok(Some(data[..end].to_vec()));
    }
    let mut path = None;
    if kind.is_pax_local_extensions() {
        for record in tar::PaxExtensions::new(data) {
            let record = record?;
            match record.key() {
                Ok("path") => path = Some(record.value_bytes().to_vec()),
                // Entries are iterated raw, so a size here would not be applied: the member's
                // data would be misread.
                Ok("size") => {
                    return Err(io::Error::other(
                        "a PAX header overrides a member's size, which no CIFAR-10 archive needs",
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(path)
}

/// The six batch files (and the synthetic marker) among the archive's members. Entries are
/// iterated raw, so that netc, not `tar`, decides how much of a long-name entry or a PAX header
/// to read: `tar` would read one of any size into memory.
fn read_members<R: Read>(
    archive: &mut tar::Archive<R>,
    archive_name: &str,
    limits: ArchiveLimits,
    failed: &dyn Fn(&str, io::Error) -> DataError,
) -> Result<RawFiles, DataError> {
    let names: [String; 6] =
        std::array::from_fn(|i| format!("{archive_name} (member {FOLDER_NAME}/{})", file_name(i)));
    let mut raw = RawFiles::new(names);
    let entries = archive
        .entries()
        .map_err(|e| failed("the archive header", e))?
        .raw(true);
    let mut next_name: Option<Vec<u8>> = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| failed("a member header", e))?;
        let kind = entry.header().entry_type();
        if let Some(what) = header_entry_kind(kind) {
            if entry.size() > limits.header_entry {
                return Err(DataError::OversizedHeader {
                    archive: archive_name.to_owned(),
                    kind: what,
                    bytes: entry.size(),
                    limit: limits.header_entry,
                });
            }
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .map_err(|e| failed("a member header", e))?;
            if let Some(name) = extended_name(kind, &data).map_err(|e| failed(what, e))? {
                next_name = Some(name);
            }
            continue;
        }
        let member_path = match next_name.take() {
            Some(bytes) => PathBuf::from(String::from_utf8_lossy(&bytes).into_owned()),
            None => entry
                .path()
                .map_err(|e| failed("a member name", e))?
                .into_owned(),
        };
        let member = member_path.display().to_string();
        if entry.size() > limits.member {
            return Err(DataError::OversizedMember {
                archive: archive_name.to_owned(),
                member,
                bytes: entry.size(),
                limit: limits.member,
            });
        }
        let Some(base) = member_path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let display = format!("{archive_name} (member {member})");
        if base == SYNTHETIC_MARKER {
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .map_err(|e| failed(&member, e))?;
            raw.expected = read_marker(&display, &text)?;
            continue;
        }
        let Some(slot) = file_slot(base) else {
            continue;
        };
        if !kind.is_file() {
            return Err(DataError::NotAFile { file: display });
        }
        if raw.files[slot].is_some() {
            return Err(DataError::DuplicateMember {
                archive: archive_name.to_owned(),
                member,
            });
        }
        let records = record_count(&display, entry.size())?;
        let data = read_records(&mut entry, records).map_err(|failure| match failure {
            ReadFailure::Io(source) => failed(&member, source),
            ReadFailure::Label { record, label } => DataError::BadLabel {
                file: display.clone(),
                record,
                label,
            },
        })?;
        raw.names[slot] = display;
        raw.files[slot] = Some(data);
    }
    let missing: Vec<String> = (0..6)
        .filter(|&s| raw.files[s].is_none())
        .map(|s| format!("{FOLDER_NAME}/{}", file_name(s)))
        .collect();
    if !missing.is_empty() {
        return Err(DataError::MissingMember {
            archive: archive_name.to_owned(),
            members: missing,
        });
    }
    Ok(raw)
}

/// A training/validation partition of a set's examples, as sorted index lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<u32>,
    pub validation: Vec<u32>,
}

/// Holds out `validation` of `n` examples, chosen by a Fisher–Yates shuffle keyed by `seed`. Both
/// lists are sorted: their order carries no meaning (each epoch shuffles afresh), and sorted
/// indices read the pixels front to back.
pub fn split_validation(n: usize, validation: usize, seed: u64) -> Result<Split, DataError> {
    if validation >= n {
        return Err(DataError::ValidationTooLarge {
            validation,
            available: n,
        });
    }
    let mut order: Vec<u32> = (0..n as u32).collect();
    fisher_yates(&mut order, &mut SplitMix64::new(seed, purpose::SPLIT, 0));
    let mut held_out = order.split_off(n - validation);
    order.sort_unstable();
    held_out.sort_unstable();
    Ok(Split {
        train: order,
        validation: held_out,
    })
}

fn fisher_yates(items: &mut [u32], rng: &mut SplitMix64) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i + 1);
        items.swap(i, j);
    }
}

/// The order of `train` in 0-based `epoch`: a pure function of `(seed, epoch)`, so a resumed or
/// repeated run sees the same batches.
pub fn epoch_order(train: &[u32], seed: u64, epoch: usize) -> Vec<u32> {
    let mut order = train.to_vec();
    fisher_yates(
        &mut order,
        &mut SplitMix64::new(seed, purpose::SHUFFLE, epoch as u64),
    );
    order
}

/// Number of batches of at most `batch` examples that cover `n` examples (the last may be partial).
pub fn batch_count(n: usize, batch: usize) -> usize {
    n.div_ceil(batch.max(1))
}

/// Gathers batches of examples in a given order into one reused buffer. The last, partial batch
/// is kept, so every example is seen once per pass.
pub struct Batcher<'a> {
    examples: &'a Examples,
    order: &'a [u32],
    batch: usize,
    next: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

impl<'a> Batcher<'a> {
    /// A `batch` of 0 is treated as 1 rather than looping forever; the checker never lets it
    /// through anyway. The buffer holds at most the examples in `order`, so it is never larger
    /// than the data it gathers from (which is already in memory).
    pub fn new(examples: &'a Examples, order: &'a [u32], batch: usize) -> Self {
        let batch = batch.max(1);
        let rows = batch.min(order.len());
        Batcher {
            examples,
            order,
            batch,
            next: 0,
            pixels: Vec::with_capacity(rows * examples.features()),
            labels: Vec::with_capacity(rows),
        }
    }

    pub fn batches(&self) -> usize {
        batch_count(self.order.len(), self.batch)
    }

    /// The next batch, borrowed from the buffer until the following call.
    pub fn next_batch(&mut self) -> Option<Batch<'_>> {
        if self.next >= self.order.len() {
            return None;
        }
        let end = (self.next + self.batch).min(self.order.len());
        self.pixels.clear();
        self.labels.clear();
        for &i in &self.order[self.next..end] {
            self.pixels
                .extend_from_slice(self.examples.image(i as usize));
            self.labels.push(self.examples.labels()[i as usize]);
        }
        self.next = end;
        Some(Batch {
            pixels: &self.pixels,
            labels: &self.labels,
        })
    }
}

/// Smallest standard deviation standardization divides by, in grey levels. A feature that varies
/// by less than one grey level over the training split carries no usable signal, and dividing by
/// a tinier number would turn a one-level difference at test time into a huge input.
pub const MIN_STD: f32 = 1.0;

/// Per-feature mean and (population) standard deviation of `indices`, in raw pixel units, for
/// `(x - mean) / std`. Sums are exact integers, so the result does not depend on order.
pub fn input_stats(examples: &Examples, indices: &[u32]) -> InputStats {
    let features = examples.features();
    let mut sum = vec![0u64; features];
    let mut sum_sq = vec![0u64; features];
    for &i in indices {
        let image = examples.image(i as usize);
        for ((s, q), &x) in sum.iter_mut().zip(sum_sq.iter_mut()).zip(image) {
            let x = u64::from(x);
            *s += x;
            *q += x * x;
        }
    }
    let n = indices.len().max(1) as f64;
    let mut mean = Vec::with_capacity(features);
    let mut std = Vec::with_capacity(features);
    for (&s, &q) in sum.iter().zip(&sum_sq) {
        let m = s as f64 / n;
        let var = (q as f64 / n - m * m).max(0.0);
        mean.push(m as f32);
        std.push((var.sqrt() as f32).max(MIN_STD));
    }
    InputStats { mean, std }
}

/// Mean and (population) standard deviation of each colour channel over every pixel of
/// `indices`, in raw pixel units, repeated for each feature of the channel (`planes` gives the
/// byte layout: feature `f` belongs to channel `f / plane`), so that the backends standardize
/// with per-feature vectors as they always do. The standard deviation is floored at `MIN_STD`.
/// Sums are exact integers, so the result does not depend on order.
pub fn channel_input_stats(examples: &Examples, indices: &[u32], planes: Planes) -> InputStats {
    let plane = planes.plane().max(1);
    let mut sum = vec![0u64; planes.channels];
    let mut sum_sq = vec![0u64; planes.channels];
    for &i in indices {
        let channels = sum.iter_mut().zip(sum_sq.iter_mut());
        for ((s, q), pixels) in channels.zip(examples.image(i as usize).chunks(plane)) {
            for &x in pixels {
                let x = u64::from(x);
                *s += x;
                *q += x * x;
            }
        }
    }
    let n = (indices.len() * plane).max(1) as f64;
    let mut mean = Vec::with_capacity(examples.features());
    let mut std = Vec::with_capacity(examples.features());
    for (&s, &q) in sum.iter().zip(&sum_sq) {
        let m = s as f64 / n;
        let var = (q as f64 / n - m * m).max(0.0);
        mean.extend(std::iter::repeat_n(m as f32, plane));
        std.extend(std::iter::repeat_n((var.sqrt() as f32).max(MIN_STD), plane));
    }
    InputStats { mean, std }
}

/// The statistics `program` standardizes its input with, over the training examples
/// `indices` (`None` when it scales its input): per feature (`input_stats`) or per channel
/// (`channel_input_stats`), as `Input::stats_scope` says.
pub fn standardization(
    program: &Program,
    examples: &Examples,
    indices: &[u32],
) -> Option<InputStats> {
    let input = &program.input;
    match (input.preprocess, input.stats_scope) {
        (Preprocess::Scale01, _) => None,
        (Preprocess::Standardize, StatsScope::Feature) => Some(input_stats(examples, indices)),
        (Preprocess::Standardize, StatsScope::Channel) => Some(channel_input_stats(
            examples,
            indices,
            input.dataset.planes(),
        )),
    }
}

/// Container of a generated data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyntheticFormat {
    /// `dir/cifar-10-batches-bin/*.bin`.
    Folder,
    /// `dir/cifar-10-binary.tar.gz`.
    Tarball,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyntheticSpec {
    /// Records in each of the six files (1..=10,000).
    pub records_per_file: usize,
    pub seed: u64,
    pub format: SyntheticFormat,
}

/// The mean grey level of `channel` (0 red, 1 green, 2 blue) in images of `class`. Each class has
/// its own colour, spread over 50..=194 in every channel, and no two classes share a channel mean.
pub fn synthetic_class_mean(class: u8, channel: usize) -> u8 {
    let step = [1usize, 3, 7][channel % 3];
    50 + 16 * ((usize::from(class) * step) % 10) as u8
}

/// Bytes of file `slot` (0–4 training, 5 test) of a synthetic data set: random balanced-ish
/// labels, each pixel its class's channel mean plus uniform noise in ±48 grey levels. A linear
/// model separates the classes by mean colour, but no single pixel gives the label away.
pub fn synthetic_file(records: usize, seed: u64, slot: usize) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed, SYNTHETIC_PURPOSE, slot as u64);
    let mut out = Vec::with_capacity(records * RECORD_BYTES);
    for _ in 0..records {
        let label = rng.below(CLASSES) as u8;
        out.push(label);
        for channel in 0..3 {
            let mean = i32::from(synthetic_class_mean(label, channel));
            for _ in 0..IMAGE_BYTES / 3 {
                let noise = rng.below(97) as i32 - 48;
                out.push((mean + noise).clamp(0, 255) as u8);
            }
        }
    }
    out
}

fn marker_text(records: usize) -> String {
    format!("netc synthetic CIFAR-10-layout data; not real images\nrecords_per_file {records}\n")
}

/// Writes a small generated data set under `dir` in CIFAR-10's binary layout and returns the path
/// to hand to `locate`/`load` (the folder or the tarball). Every file is written atomically.
pub fn write_synthetic(dir: &Path, spec: &SyntheticSpec) -> Result<PathBuf, DataError> {
    let records = spec.records_per_file.clamp(1, RECORDS_PER_FILE);
    let write_err = |path: &Path| {
        let file = shown(path);
        move |source| DataError::Write { file, source }
    };
    fs::create_dir_all(dir).map_err(write_err(dir))?;
    match spec.format {
        SyntheticFormat::Folder => {
            let folder = dir.join(FOLDER_NAME);
            fs::create_dir_all(&folder).map_err(write_err(&folder))?;
            for slot in 0..6 {
                let path = folder.join(file_name(slot));
                atomic_write(&path, &synthetic_file(records, spec.seed, slot))
                    .map_err(write_err(&path))?;
            }
            let marker = folder.join(SYNTHETIC_MARKER);
            atomic_write(&marker, marker_text(records).as_bytes()).map_err(write_err(&marker))?;
            Ok(folder)
        }
        SyntheticFormat::Tarball => {
            let path = dir.join(TARBALL_NAME);
            let mut members = vec![(
                SYNTHETIC_MARKER.to_owned(),
                marker_text(records).into_bytes(),
            )];
            for slot in 0..6 {
                members.push((
                    file_name(slot).to_owned(),
                    synthetic_file(records, spec.seed, slot),
                ));
            }
            let bytes = tarball_bytes(&members).map_err(write_err(&path))?;
            atomic_write(&path, &bytes).map_err(write_err(&path))?;
            Ok(path)
        }
    }
}

/// A gzip-compressed tar holding each `(name, bytes)` as `cifar-10-batches-bin/<name>`.
pub fn tarball_bytes(members: &[(String, Vec<u8>)]) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (name, bytes) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(
            &mut header,
            format!("{FOLDER_NAME}/{name}"),
            bytes.as_slice(),
        )?;
    }
    builder.into_inner()?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use miette::Diagnostic;

    fn code(e: &DataError) -> String {
        e.code().map(|c| c.to_string()).unwrap_or_default()
    }

    fn synthetic(dir: &Path, records: usize, format: SyntheticFormat) -> PathBuf {
        let spec = SyntheticSpec {
            records_per_file: records,
            seed: 7,
            format,
        };
        write_synthetic(dir, &spec).expect("write synthetic data")
    }

    fn load_path(p: &Path) -> Result<Cifar10, DataError> {
        load(Some(p))
    }

    #[test]
    fn folder_round_trips_the_generated_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = synthetic(tmp.path(), 20, SyntheticFormat::Folder);
        let data = load_path(&folder).unwrap();
        assert_eq!(data.source, DataSource::Folder(folder));
        assert_eq!((data.train.len(), data.test.len()), (100, 20));
        assert_eq!(data.train.features(), IMAGE_BYTES);
        // Record 3 of data_batch_2 is training example 23.
        let file = synthetic_file(20, 7, 1);
        let record = &file[3 * RECORD_BYTES..4 * RECORD_BYTES];
        assert_eq!(data.train.labels()[23], record[0]);
        assert_eq!(data.train.image(23), &record[1..]);
        let test_file = synthetic_file(20, 7, 5);
        assert_eq!(data.test.labels()[19], test_file[19 * RECORD_BYTES]);
    }

    #[test]
    fn tarball_loads_the_same_data_as_the_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = synthetic(&tmp.path().join("a"), 15, SyntheticFormat::Folder);
        let tarball = synthetic(&tmp.path().join("b"), 15, SyntheticFormat::Tarball);
        let from_folder = load_path(&folder).unwrap();
        let from_tar = load_path(&tarball).unwrap();
        assert_eq!(from_tar.source, DataSource::Tarball(tarball));
        assert_eq!(from_folder.train, from_tar.train);
        assert_eq!(from_folder.test, from_tar.test);
    }

    #[test]
    fn synthetic_classes_differ_in_mean_colour() {
        let means: Vec<[u8; 3]> = (0..10u8)
            .map(|c| std::array::from_fn(|ch| synthetic_class_mean(c, ch)))
            .collect();
        for ch in 0..3 {
            let mut seen: Vec<u8> = means.iter().map(|m| m[ch]).collect();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), 10, "channel {ch} means collide");
        }
        // The generated pixels average to the class mean within noise.
        let file = synthetic_file(50, 3, 0);
        for record in file.chunks_exact(RECORD_BYTES) {
            let red = &record[1..1 + 1024];
            let mean = red.iter().map(|&x| f64::from(x)).sum::<f64>() / 1024.0;
            let expected = f64::from(synthetic_class_mean(record[0], 0));
            assert!((mean - expected).abs() < 5.0, "{mean} vs {expected}");
        }
    }

    #[test]
    fn locate_accepts_each_form_of_path() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let tar_root = root.join("tar");
        let tarball = synthetic(&tar_root, 2, SyntheticFormat::Tarball);
        let folder_root = root.join("folder");
        let folder = synthetic(&folder_root, 2, SyntheticFormat::Folder);
        let tb = DataSource::Tarball(tarball.clone());
        assert_eq!(locate_in(std::slice::from_ref(&tarball)).unwrap(), tb);
        assert_eq!(locate_in(std::slice::from_ref(&tar_root)).unwrap(), tb);
        let fd = DataSource::Folder(folder.clone());
        assert_eq!(locate_in(std::slice::from_ref(&folder)).unwrap(), fd);
        assert_eq!(locate_in(std::slice::from_ref(&folder_root)).unwrap(), fd);
        // The extracted folder wins over the tarball beside it.
        synthetic(&folder_root, 2, SyntheticFormat::Tarball);
        assert_eq!(locate_in(std::slice::from_ref(&folder_root)).unwrap(), fd);
        // Later roots are searched when earlier ones hold nothing.
        let empty = root.join("empty");
        fs::create_dir(&empty).unwrap();
        assert_eq!(locate_in(&[empty, tar_root]).unwrap(), tb);
    }

    #[test]
    fn not_found_lists_every_place_looked() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("missing");
        let b = tmp.path().to_path_buf();
        let err = locate_in(&[a.clone(), b.clone()]).unwrap_err();
        assert_eq!(code(&err), "netc::data::not_found");
        let DataError::NotFound { looked } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(
            looked,
            &vec![a, b.clone(), b.join(FOLDER_NAME), b.join(TARBALL_NAME)]
        );
        let text = err.to_string();
        assert!(text.contains(&b.join(TARBALL_NAME).display().to_string()));
        let help = err.help().map(|h| h.to_string()).unwrap_or_default();
        assert!(
            help.contains("NETC_DATA")
                && help.contains("--data")
                && help.contains("netc data fetch"),
            "{help}"
        );
    }

    #[test]
    fn search_roots_follow_the_precedence() {
        let (x, e, d, c) = (
            Path::new("/x"),
            Path::new("/env"),
            Path::new("data"),
            Path::new("/cache/netc"),
        );
        assert_eq!(search_roots(Some(x), Some(e), d, Some(c)), vec![x]);
        assert_eq!(search_roots(None, Some(e), d, Some(c)), vec![e]);
        assert_eq!(search_roots(None, None, d, Some(c)), vec![d, c]);
        assert_eq!(search_roots(None, None, d, None), vec![d]);
    }

    fn expect_err(path: &Path, expected_code: &str, needle: &str) -> DataError {
        let err = load_path(path).expect_err("loading should fail");
        assert_eq!(code(&err), expected_code, "{err}");
        assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        err
    }

    #[test]
    fn folder_errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = synthetic(tmp.path(), 4, SyntheticFormat::Folder);
        let batch3 = folder.join("data_batch_3.bin");
        let good = fs::read(&batch3).unwrap();

        let mut longer = good.clone();
        longer.push(0);
        fs::write(&batch3, &longer).unwrap();
        expect_err(&folder, "netc::data::bad_size", "data_batch_3.bin");

        fs::write(&batch3, &good[..3 * RECORD_BYTES]).unwrap();
        let err = expect_err(&folder, "netc::data::record_count", "data_batch_3.bin");
        assert!(
            err.to_string().contains("holds 3 records; expected 4"),
            "{err}"
        );

        let mut bad_label = good.clone();
        bad_label[2 * RECORD_BYTES] = 10;
        fs::write(&batch3, &bad_label).unwrap();
        let err = expect_err(&folder, "netc::data::bad_label", "data_batch_3.bin");
        assert!(matches!(
            err,
            DataError::BadLabel {
                record: 2,
                label: 10,
                ..
            }
        ));

        fs::remove_file(&batch3).unwrap();
        expect_err(&folder, "netc::data::missing_file", "data_batch_3.bin");

        fs::create_dir(&batch3).unwrap();
        expect_err(&folder, "netc::data::not_a_file", "data_batch_3.bin");
        fs::remove_dir(&batch3).unwrap();
        fs::write(&batch3, &good).unwrap();
        assert!(load_path(&folder).is_ok());
    }

    #[test]
    fn without_the_marker_files_must_hold_ten_thousand_records() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = synthetic(tmp.path(), 3, SyntheticFormat::Folder);
        fs::remove_file(folder.join(SYNTHETIC_MARKER)).unwrap();
        let err = expect_err(&folder, "netc::data::record_count", "data_batch_1.bin");
        assert!(err.to_string().contains("expected 10000"), "{err}");
    }

    #[test]
    fn marker_errors_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = synthetic(tmp.path(), 3, SyntheticFormat::Folder);
        let marker = folder.join(SYNTHETIC_MARKER);
        fs::write(&marker, "records_per_file lots\n").unwrap();
        expect_err(&folder, "netc::data::bad_marker", SYNTHETIC_MARKER);
        fs::remove_file(&marker).unwrap();
        // A directory where the marker should be cannot be read.
        fs::create_dir(&marker).unwrap();
        expect_err(&folder, "netc::data::unreadable", SYNTHETIC_MARKER);
    }

    fn tar_with(dir: &Path, members: &[(String, Vec<u8>)]) -> PathBuf {
        let path = dir.join(TARBALL_NAME);
        fs::write(&path, tarball_bytes(members).unwrap()).unwrap();
        path
    }

    fn good_members(records: usize) -> Vec<(String, Vec<u8>)> {
        let mut m = vec![(
            SYNTHETIC_MARKER.to_owned(),
            marker_text(records).into_bytes(),
        )];
        m.extend((0..6).map(|s| (file_name(s).to_owned(), synthetic_file(records, 1, s))));
        m
    }

    #[test]
    fn tarball_errors_name_the_member() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();

        let mut members = good_members(3);
        members.remove(4); // data_batch_4.bin
        members.remove(5); // test_batch.bin
        let path = tar_with(dir, &members);
        let err = expect_err(&path, "netc::data::missing_member", "data_batch_4.bin");
        assert!(err.to_string().contains("test_batch.bin"), "{err}");

        let mut members = good_members(3);
        members[2].1.truncate(2 * RECORD_BYTES);
        let path = tar_with(dir, &members);
        expect_err(&path, "netc::data::record_count", "data_batch_2.bin");

        let mut members = good_members(3);
        members[6].1[RECORD_BYTES] = 200;
        let path = tar_with(dir, &members);
        expect_err(&path, "netc::data::bad_label", "test_batch.bin");

        let mut members = good_members(3);
        members.push(members[1].clone());
        let path = tar_with(dir, &members);
        expect_err(&path, "netc::data::duplicate_member", "data_batch_1.bin");

        let bytes = tarball_bytes(&good_members(3)).unwrap();
        fs::write(&path, &bytes[..bytes.len() * 2 / 3]).unwrap();
        expect_err(&path, "netc::data::corrupt_archive", TARBALL_NAME);

        fs::write(&path, b"not a gzip file at all").unwrap();
        expect_err(&path, "netc::data::corrupt_archive", TARBALL_NAME);
    }

    /// The archive `tarball_bytes` makes, decompressed, without its end-of-archive blocks, so
    /// that tests can append members of their own.
    fn open_tar(members: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut tar = Vec::new();
        MultiGzDecoder::new(tarball_bytes(members).unwrap().as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        assert!(tar[tar.len() - 1024..].iter().all(|&b| b == 0));
        tar.truncate(tar.len() - 1024);
        tar
    }

    /// A tar header block, written field by field rather than by `tar::Builder`, which would
    /// want the data it announces.
    fn header_block(name: &str, kind: u8, size: u64) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.set_path(name).unwrap();
        header.set_entry_type(tar::EntryType::new(kind));
        header.set_size(size);
        header.set_mode(0o644);
        header.set_cksum();
        header.as_bytes().to_vec()
    }

    /// Counts the bytes read through it.
    struct Counting<R> {
        inner: R,
        count: Rc<Cell<u64>>,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.count.set(self.count.get() + n as u64);
            Ok(n)
        }
    }

    /// `prefix`, then `zeros` zero bytes generated as they are read, gzip-compressed as it is
    /// read, and read as an archive: a large archive that never exists whole. Returns the error
    /// and how many of the zeros were read.
    fn read_lazy(prefix: Vec<u8>, zeros: u64) -> (DataError, u64) {
        let count = Rc::new(Cell::new(0));
        let zeros = Counting {
            inner: io::repeat(0).take(zeros),
            count: Rc::clone(&count),
        };
        let err = read_gzip_of(io::Cursor::new(prefix).chain(zeros));
        (err, count.get())
    }

    /// Reads `tar` through a gzip compressor that runs only as far as the archive is read.
    fn read_gzip_of(tar: impl Read) -> DataError {
        let gz = flate2::read::GzEncoder::new(tar, flate2::Compression::fast());
        read_archive(gz, "bomb.tar.gz", ArchiveLimits::CIFAR10)
            .map(|_| ())
            .expect_err("the archive is refused")
    }

    #[test]
    fn xxh64_matches_the_reference_vectors() {
        // From libxxhash 0.8 (`XXH64(data, len, 0)`), covering every tail length class.
        let bytes_47: Vec<u8> = (0..47).collect();
        let bytes_773: Vec<u8> = (0..=255u8).cycle().take(768).chain(*b"tail1").collect();
        let cases: [(&[u8], u64); 6] = [
            (b"", 0xef46_db37_51d8_e999),
            (b"a", 0xd24e_c4f1_a98c_6e5b),
            (b"abc", 0x44bc_2cf5_ad77_0999),
            (
                b"0123456789abcdef0123456789abcdef0123456789abcdefXYZW",
                0x20e5_a9de_5a2e_3dd5,
            ),
            (&bytes_47, 0x0d98_83a0_3e7b_fbb8),
            (&bytes_773, 0x7a71_e90c_16c8_3cab),
        ];
        for (bytes, expected) in cases {
            assert_eq!(xxh64(bytes), expected, "{} bytes", bytes.len());
        }
    }

    #[test]
    fn a_bit_flip_anywhere_in_the_compressed_stream_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(TARBALL_NAME);
        let good = tarball_bytes(&good_members(3)).unwrap();
        let len = good.len();
        // Past the gzip header (whose time stamp no checksum covers) and short of the last byte
        // of deflate data (whose padding bits mean nothing), then the CRC-32 and length trailer.
        let body = (10..len - 9).step_by((len - 19) / 16);
        let trailer = len - 8..len;
        let mut silently_loaded = Vec::new();
        for at in body.chain(trailer) {
            let mut bytes = good.clone();
            bytes[at] ^= 1 << (at % 8);
            fs::write(&path, &bytes).unwrap();
            match load_path(&path) {
                Err(e) if code(&e) == "netc::data::corrupt_archive" => {
                    let help = e.help().map(|h| h.to_string()).unwrap_or_default();
                    assert!(help.contains("netc data fetch"), "{help}");
                }
                Err(e) => panic!("flip at byte {at}: {e}"),
                Ok(_) => silently_loaded.push(at),
            }
        }
        assert_eq!(silently_loaded, Vec::<usize>::new(), "of {len} bytes");
        fs::write(&path, &good).unwrap();
        assert!(load_path(&path).is_ok());
    }

    #[test]
    fn a_gzip_stream_of_several_members_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let members = good_members(3);
        let mut tar = Vec::new();
        MultiGzDecoder::new(tarball_bytes(&members).unwrap().as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        // Cut inside a batch file, as `cat a.gz b.gz` of a split archive would.
        let mut bytes = Vec::new();
        for part in [&tar[..5_000], &tar[5_000..20_000], &tar[20_000..]] {
            let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
            io::Write::write_all(&mut gz, part).unwrap();
            bytes.extend(gz.finish().unwrap());
        }
        let path = tmp.path().join(TARBALL_NAME);
        fs::write(&path, &bytes).unwrap();
        let from_parts = load_path(&path).unwrap();
        fs::write(&path, tarball_bytes(&members).unwrap()).unwrap();
        let whole = load_path(&path).unwrap();
        assert_eq!(
            (from_parts.train, from_parts.test),
            (whole.train, whole.test)
        );
    }

    #[test]
    fn header_entries_that_claim_gigabytes_are_refused_unread() {
        const CLAIMED: u64 = 2 << 30;
        for kind in [b'L', b'K', b'x'] {
            let header = header_block("././@LongLink", kind, CLAIMED);
            let (err, pulled) = read_lazy(header, CLAIMED);
            assert_eq!(code(&err), "netc::data::oversized_header", "{err}");
            assert!(
                err.to_string().contains(&format!("of {CLAIMED} bytes")),
                "{err}"
            );
            // The compressor runs ahead of the reader by a buffer or two.
            assert!(pulled < 64 << 20, "{pulled} of {CLAIMED} bytes read");
        }
    }

    #[test]
    fn a_member_far_larger_than_a_batch_file_is_refused_unread() {
        const CLAIMED: u64 = 1 << 30;
        let mut tar = open_tar(&good_members(2));
        tar.extend(header_block(
            &format!("{FOLDER_NAME}/readme.html"),
            b'0',
            CLAIMED,
        ));
        let (err, pulled) = read_lazy(tar, CLAIMED);
        assert_eq!(code(&err), "netc::data::oversized_member", "{err}");
        assert!(err.to_string().contains("readme.html"), "{err}");
        assert!(pulled < 64 << 20, "{pulled} of {CLAIMED} bytes read");
    }

    #[test]
    fn decompression_stops_at_the_limit() {
        // A good archive followed by members each the size of a batch file, 270 MB in all,
        // generated as they are read: they compress to a few hundred kilobytes.
        let mut tar: Box<dyn Read> = Box::new(io::Cursor::new(open_tar(&good_members(2))));
        let junk = (RECORDS_PER_FILE * RECORD_BYTES) as u64;
        for i in 0..9 {
            let header = header_block(&format!("{FOLDER_NAME}/junk_{i}.bin"), b'0', junk);
            let member =
                io::Cursor::new(header).chain(io::repeat(0).take(junk.next_multiple_of(512)));
            tar = Box::new(tar.chain(member));
        }
        let err = read_gzip_of(tar.chain(io::repeat(0).take(1024)));
        assert_eq!(code(&err), "netc::data::archive_too_large", "{err}");
        assert!(err.to_string().contains("bomb.tar.gz"), "{err}");
    }

    #[test]
    fn a_directory_member_is_not_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let mut builder =
            tar::Builder::new(GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(0o755);
        builder
            .append_data(
                &mut header,
                "cifar-10-batches-bin/data_batch_1.bin/",
                io::empty(),
            )
            .unwrap();
        let bytes = builder.into_inner().unwrap().finish().unwrap();
        let path = tmp.path().join(TARBALL_NAME);
        fs::write(&path, bytes).unwrap();
        expect_err(&path, "netc::data::not_a_file", "data_batch_1.bin");
    }

    #[test]
    fn split_is_a_seeded_partition() {
        let s = split_validation(100, 30, 5).unwrap();
        assert_eq!((s.train.len(), s.validation.len()), (70, 30));
        let mut all: Vec<u32> = s.train.iter().chain(&s.validation).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<u32>>());
        assert!(s.train.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(s, split_validation(100, 30, 5).unwrap());
        assert_ne!(s, split_validation(100, 30, 6).unwrap());
        // Not simply the last examples.
        assert_ne!(s.validation, (70..100).collect::<Vec<u32>>());
        assert_eq!(split_validation(10, 0, 1).unwrap().train.len(), 10);
        let err = split_validation(10, 10, 1).unwrap_err();
        assert_eq!(code(&err), "netc::data::validation_size");
    }

    #[test]
    fn epochs_shuffle_differently_and_reproducibly() {
        let train: Vec<u32> = (0..50).collect();
        let e0 = epoch_order(&train, 1, 0);
        let e1 = epoch_order(&train, 1, 1);
        assert_ne!(e0, e1);
        assert_ne!(e0, train);
        assert_eq!(e0, epoch_order(&train, 1, 0));
        let mut sorted = e1.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, train);
    }

    #[test]
    fn batcher_keeps_the_last_partial_batch() {
        let pixels: Vec<u8> = (0..14).collect();
        let labels = vec![0, 1, 2, 3, 4, 5, 6];
        let ex = Examples::from_parts(2, pixels, labels).unwrap();
        let order = [6u32, 0, 3, 1, 5, 2, 4];
        let mut b = Batcher::new(&ex, &order, 3);
        assert_eq!(b.batches(), 3);
        let mut seen = Vec::new();
        while let Some(batch) = b.next_batch() {
            seen.push((batch.labels.to_vec(), batch.pixels.to_vec()));
        }
        assert_eq!(
            seen,
            vec![
                (vec![6, 0, 3], vec![12, 13, 0, 1, 6, 7]),
                (vec![1, 5, 2], vec![2, 3, 10, 11, 4, 5]),
                (vec![4], vec![8, 9]),
            ]
        );
        assert!(Examples::from_parts(3, vec![0; 14], vec![0; 7]).is_err());
    }

    #[test]
    fn stats_use_only_the_given_examples_and_clamp_std() {
        // Feature 0 varies, feature 1 is constant on the training examples.
        let ex = Examples::from_parts(2, vec![0, 9, 10, 9, 20, 9, 250, 0], vec![0; 4]).unwrap();
        let stats = input_stats(&ex, &[0, 1, 2]);
        assert_eq!(stats.mean, vec![10.0, 9.0]);
        let std0 = (200.0f64 / 3.0).sqrt() as f32;
        assert_eq!(stats.std, vec![std0, MIN_STD]);
    }

    #[test]
    fn channel_stats_pool_each_plane_over_the_given_examples_and_clamp_std() {
        // Two planes of one row of two pixels. Channel 0 takes 0, 2, 4, 6 over the examples
        // used (mean 3, variance (9 + 1 + 1 + 9) / 4 = 5); channel 1 is 9 everywhere. The
        // middle example is not in the split and would change both.
        let planes = Planes {
            channels: 2,
            height: 1,
            width: 2,
        };
        let pixels = vec![0, 2, 9, 9, 200, 200, 200, 200, 4, 6, 9, 9];
        let ex = Examples::from_parts(4, pixels, vec![0; 3]).unwrap();
        let stats = channel_input_stats(&ex, &[0, 2], planes);
        assert_eq!(stats.mean, vec![3.0, 3.0, 9.0, 9.0]);
        let std0 = 5f64.sqrt() as f32;
        assert_eq!(stats.std, vec![std0, std0, MIN_STD, MIN_STD]);
    }

    #[test]
    fn standardization_follows_the_programs_preprocessing_and_scope() {
        let tmp = tempfile::tempdir().unwrap();
        let data = load(Some(&synthetic(tmp.path(), 20, SyntheticFormat::Folder))).unwrap();
        let indices: Vec<u32> = (0..50).collect();
        let compile = |input: &str| {
            let text = format!(
                "model m\ninput cifar10 {input}\ndense 10 {{ activation: softmax }}\n\
                 train {{ optimizer: sgd, epochs: 1, validation: 10 }}\n"
            );
            netc_front::compile(&text).program.expect("the spec checks")
        };
        assert_eq!(standardization(&compile(""), &data.train, &indices), None);
        let per_feature = standardization(&compile("{ standardize }"), &data.train, &indices);
        assert_eq!(per_feature, Some(input_stats(&data.train, &indices)));
        let channel = compile("{ standardize { per: channel } }");
        let stats = standardization(&channel, &data.train, &indices).expect("statistics");
        let planes = channel.input.dataset.planes();
        assert_eq!(stats, channel_input_stats(&data.train, &indices, planes));
        assert_eq!(stats.mean.len(), IMAGE_BYTES);
        // One value per plane, and the planes' means are those of all their bytes.
        for (c, means) in stats.mean.chunks(planes.plane()).enumerate() {
            assert!(means.iter().all(|&m| m == means[0]), "channel {c}");
            let sum: u64 = indices
                .iter()
                .flat_map(|&i| &data.train.image(i as usize)[c * 1024..(c + 1) * 1024])
                .map(|&x| u64::from(x))
                .sum();
            let expected = sum as f64 / (indices.len() * 1024) as f64;
            assert_eq!(means[0], expected as f32, "channel {c}");
        }
        assert_ne!(stats.mean[0], stats.mean[1024]);
    }

    /// Loads the real data when `NETC_DATA` points at it.
    #[test]
    fn real_cifar10_when_available() {
        if std::env::var_os("NETC_DATA").is_none() {
            eprintln!("skipped: set NETC_DATA to the CIFAR-10 tarball or folder");
            return;
        }
        let data = load(None).unwrap();
        assert_eq!((data.train.len(), data.test.len()), (50_000, 10_000));
        assert_eq!(data.train.class_counts(10), vec![5_000; 10]);
        assert_eq!(data.test.class_counts(10), vec![1_000; 10]);
    }
}
