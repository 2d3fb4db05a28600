//! `--set PATH=VALUE`: rewriting a spec's text through its syntax tree, so that what runs is
//! checked by the normal front end and the rewritten file shows exactly what ran.
//!
//! A path names one place in the file by its nesting (docs/language.md, "Addressing parameters
//! (`--set`)"): `train.optimizer.lr`, `defaults.dense.init`, `dense_21.units`,
//! `repeat_1.dense_1.units`. This module only finds places and splices text; it never decides
//! whether a value or an inserted option is valid: the checker does that on the rewritten text,
//! with its own diagnostics. It must not see the AST or the IR.

use std::fmt::Write as _;

use crate::ast::LayerKindName;
use crate::syntax::{self, Entry, EntryKind, ValueKind};
use netc_diagnostics::{did_you_mean, one_of, Span};

/// How many paths a help text lists before it stops.
const LISTED_PATHS: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
pub enum OverrideError {
    #[error("`--set {arg}`: {problem}")]
    #[diagnostic(
        code(netc::set::malformed),
        help(
            "write `--set PATH=VALUE[,VALUE...]`, e.g. `--set train.optimizer.lr=1e-4,3e-4`; \
             a path is names joined by dots"
        )
    )]
    Malformed { arg: String, problem: String },

    #[error("`{value}` is not one `.net` value")]
    #[diagnostic(
        code(netc::set::bad_value),
        help("a value is a number (`3e-4`), `true`/`false`, a name (`he_normal`) or a list `[5, 15]`")
    )]
    BadValue { value: String },

    #[error("the spec has no parameter `{path}`")]
    #[diagnostic(code(netc::set::unknown_path), help("{help}"))]
    UnknownPath { path: String, help: String },

    #[error("`{path}` is ambiguous: it matches {}", one_of(&candidates.iter().map(String::as_str).collect::<Vec<_>>()))]
    #[diagnostic(
        code(netc::set::ambiguous_path),
        help("write more of the path, e.g. `{}`", candidates.first().map_or("", String::as_str))
    )]
    AmbiguousPath {
        path: String,
        candidates: Vec<String>,
    },

    #[error("`{path}` is a block, not a value")]
    #[diagnostic(code(netc::set::not_a_value), help("{help}"))]
    NotAValue { path: String, help: String },

    #[error("{what} `{item}` is given twice")]
    #[diagnostic(
        code(netc::set::duplicate),
        help("give each parameter once, with all its values: `--set PATH=V1,V2`")
    )]
    Duplicate { what: &'static str, item: String },
}

/// One `--set PATH=VALUE[,VALUE...]` argument, split but not yet resolved against a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetArg {
    /// The path as written.
    pub path: String,
    /// The values in the order given, each one `.net` value as written.
    pub values: Vec<String>,
}

impl SetArg {
    /// Splits `PATH=V1,V2,...`. Commas inside a list (`[5, 15]`) do not separate values.
    pub fn parse(arg: &str) -> Result<SetArg, OverrideError> {
        let malformed = |problem: &str| OverrideError::Malformed {
            arg: arg.to_string(),
            problem: problem.to_string(),
        };
        let Some((path, values)) = arg.split_once('=') else {
            return Err(malformed("there is no `=` between the path and the values"));
        };
        let path = path.trim();
        check_path_syntax(path).map_err(|p| malformed(&p))?;
        let values = split_values(values);
        if values.iter().any(String::is_empty) {
            return Err(malformed("a value is empty"));
        }
        for (i, v) in values.iter().enumerate() {
            check_value(v)?;
            if values[..i].contains(v) {
                return Err(OverrideError::Duplicate {
                    what: "the value",
                    item: v.clone(),
                });
            }
        }
        Ok(SetArg {
            path: path.to_string(),
            values,
        })
    }
}

fn check_path_syntax(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the path is empty".to_string());
    }
    for segment in path.split('.') {
        let mut chars = segment.chars();
        let starts_well = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !starts_well || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`{segment}` is not a name (a path is names joined by dots, like `train.batch`)"
            ));
        }
    }
    Ok(())
}

/// Splits at commas outside brackets and trims each value.
fn split_values(text: &str) -> Vec<String> {
    let mut values = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                values.push(text[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    values.push(text[start..].trim().to_string());
    values
}

/// A value must be exactly one value of the grammar, so splicing it can never change the
/// file's structure (no separators, braces, comments or line breaks sneak in).
fn check_value(value: &str) -> Result<(), OverrideError> {
    let bad = || OverrideError::BadValue {
        value: value.to_string(),
    };
    if value.contains(['#', '\n', '\r', '{', '}']) {
        return Err(bad());
    }
    let text = format!("x: {value}");
    let (entries, diags) = syntax::parse(&text);
    match entries.as_slice() {
        [e] if diags.is_empty()
            && e.kind == EntryKind::Property
            && e.block.is_none()
            && e.span.end == text.len() =>
        {
            Ok(())
        }
        _ => Err(bad()),
    }
}

/// Where a property that is not written yet goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Insertion {
    /// After the last entry of a non-empty block: `, name: value`.
    AfterLastEntry(usize),
    /// Right after the `{` of an empty block: ` name: value`.
    IntoEmptyBlock(usize),
    /// After the entry, which has no block: ` { name: value }`.
    NewBlock(usize),
}

/// One addressable place of a spec.
#[derive(Clone, Debug)]
struct Address {
    path: Vec<String>,
    /// The value `--set` replaces, when the place has one.
    value: Option<Span>,
    /// Where a new option of this entry's block goes; `None` for positional values.
    insert: Option<Insertion>,
}

impl Address {
    fn joined(&self) -> String {
        self.path.join(".")
    }
}

/// The positional value of a layer or repeat, addressed by this name.
fn slot_name(entry_name: &str) -> Option<&'static str> {
    match entry_name {
        "dense" => Some("units"),
        "conv2d" => Some("filters"),
        "dropout" | "alpha_dropout" => Some("rate"),
        "activation" => Some("function"),
        "repeat" => Some("count"),
        _ => None,
    }
}

fn kind_slot(name: &str) -> Option<usize> {
    LayerKindName::ALL.iter().position(|(n, _)| *n == name)
}

/// The count of a `repeat`, or 1 when it is not a whole number (the checker reports that).
fn repeat_count(entry: &Entry) -> u128 {
    match entry.args.first().map(|v| &v.kind) {
        Some(ValueKind::Number(n)) => n
            .parse::<u128>()
            .ok()
            .or_else(|| {
                n.parse::<f64>()
                    .ok()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e30)
                    .map(|f| f as u128)
            })
            .unwrap_or(1),
        _ => 1,
    }
}

/// How many layers of each kind the entries expand to (saturating: absurd counts are the
/// checker's business, not a reason to overflow).
fn expanded_counts(entries: &[Entry]) -> [u128; LayerKindName::COUNT] {
    let mut counts = [0u128; LayerKindName::COUNT];
    for e in entries.iter().filter(|e| e.kind == EntryKind::Item) {
        if let Some(slot) = kind_slot(&e.name.text) {
            counts[slot] = counts[slot].saturating_add(1);
        } else if e.name.text == "repeat" {
            let inner = e
                .block
                .as_ref()
                .map_or([0; LayerKindName::COUNT], |b| expanded_counts(&b.entries));
            let times = repeat_count(e);
            for (c, i) in counts.iter_mut().zip(inner) {
                *c = c.saturating_add(i.saturating_mul(times));
            }
        }
    }
    counts
}

/// The layers of one kind that a top-level repeat makes: `kind_from` to `kind_to`, inclusive.
#[derive(Clone, Debug)]
struct RepeatMade {
    kind: &'static str,
    from: u128,
    to: u128,
    repeat: String,
}

/// The places of a parsed file, in file order, and which layer names repeats make.
#[derive(Clone, Debug, Default)]
struct Places {
    addrs: Vec<Address>,
    made: Vec<RepeatMade>,
}

fn places(source: &str) -> Places {
    let (entries, _) = syntax::parse(source);
    let mut places = Places::default();
    places.addrs = addresses(&entries, &mut places.made);
    places
}

/// Every addressable place of a parsed file, in file order.
fn addresses(entries: &[Entry], made: &mut Vec<RepeatMade>) -> Vec<Address> {
    let mut out = Vec::new();
    let mut layers = [0u128; LayerKindName::COUNT];
    let mut repeats = 0usize;
    for e in entries {
        let is_item = e.kind == EntryKind::Item;
        if let (true, Some(slot)) = (is_item, kind_slot(&e.name.text)) {
            layers[slot] = layers[slot].saturating_add(1);
            let path = vec![format!("{}_{}", e.name.text, layers[slot])];
            add_entry(&mut out, path, e);
        } else if is_item && e.name.text == "repeat" {
            repeats += 1;
            let path = vec![format!("repeat_{repeats}")];
            add_repeat(&mut out, path, e, &mut repeats);
            let inner = expanded_counts(std::slice::from_ref(e));
            for ((c, i), (kind, _)) in layers.iter_mut().zip(inner).zip(LayerKindName::ALL) {
                if i > 0 {
                    made.push(RepeatMade {
                        kind,
                        from: *c + 1,
                        to: c.saturating_add(i),
                        repeat: format!("repeat_{repeats}"),
                    });
                }
                *c = c.saturating_add(i);
            }
        } else {
            let mut path = vec![e.name.text.clone()];
            if let (true, Some(ValueKind::Ident(name))) = (is_item, e.args.first().map(|v| &v.kind))
            {
                path.push(name.clone());
            }
            add_entry(&mut out, path, e);
        }
    }
    out
}

/// A repeat and its body, whose layers are numbered within one pass of the body.
fn add_repeat(out: &mut Vec<Address>, path: Vec<String>, entry: &Entry, repeats: &mut usize) {
    add_own(out, &path, entry);
    let Some(block) = &entry.block else { return };
    let mut layers = [0usize; LayerKindName::COUNT];
    for e in block.entries.iter().filter(|e| e.kind == EntryKind::Item) {
        let mut inner = path.clone();
        if let Some(slot) = kind_slot(&e.name.text) {
            layers[slot] += 1;
            inner.push(format!("{}_{}", e.name.text, layers[slot]));
            add_entry(out, inner, e);
        } else if e.name.text == "repeat" {
            *repeats += 1;
            inner.push(format!("repeat_{repeats}"));
            add_repeat(out, inner, e, repeats);
        }
    }
}

/// The entry itself (its value and where new options go) and its positional slot.
fn add_own(out: &mut Vec<Address>, path: &[String], entry: &Entry) {
    let value = match entry.kind {
        EntryKind::Property => entry.args.first().map(|v| v.span),
        EntryKind::Item => None,
    };
    let insert = match &entry.block {
        None => Insertion::NewBlock(content_end(entry)),
        Some(b) => match b.entries.last() {
            Some(last) => Insertion::AfterLastEntry(content_end(last)),
            None => Insertion::IntoEmptyBlock(b.span.start + 1),
        },
    };
    out.push(Address {
        path: path.to_vec(),
        value,
        insert: Some(insert),
    });
    if entry.kind == EntryKind::Item {
        if let (Some(slot), Some(arg)) = (slot_name(&entry.name.text), entry.args.first()) {
            let mut slot_path = path.to_vec();
            slot_path.push(slot.to_string());
            out.push(Address {
                path: slot_path,
                value: Some(arg.span),
                insert: None,
            });
        }
    }
}

/// Where an entry's text ends: its span may run on over spaces and a comment after it.
fn content_end(entry: &Entry) -> usize {
    match (&entry.block, entry.args.last()) {
        (Some(block), _) => block.span.end,
        (None, Some(arg)) => arg.span.end,
        (None, None) => entry.name.span.end,
    }
}

/// An entry and, recursively, the entries of its block, each addressed by its name.
fn add_entry(out: &mut Vec<Address>, path: Vec<String>, entry: &Entry) {
    add_own(out, &path, entry);
    for e in entry.block.iter().flat_map(|b| &b.entries) {
        let mut inner = path.clone();
        inner.push(e.name.text.clone());
        add_entry(out, inner, e);
    }
}

/// What a path resolved to.
enum Target<'a> {
    /// A place that exists.
    Existing(&'a Address),
    /// A new option `name` in the block of an existing place.
    New(&'a Address, &'a str),
}

fn segments(path: &str) -> Vec<&str> {
    path.split('.').collect()
}

fn ends_with(address: &Address, segs: &[&str]) -> bool {
    address.path.len() >= segs.len()
        && address.path[address.path.len() - segs.len()..]
            .iter()
            .zip(segs)
            .all(|(a, b)| a == b)
}

/// The places `segs` names: the exact path when one exists, else every place it is a suffix of.
fn matching<'a>(
    addrs: &'a [Address],
    segs: &[&str],
    usable: impl Fn(&Address) -> bool,
) -> Vec<&'a Address> {
    let usable: Vec<&Address> = addrs.iter().filter(|a| usable(a)).collect();
    let exact: Vec<&Address> = usable
        .iter()
        .copied()
        .filter(|a| a.path.len() == segs.len() && ends_with(a, segs))
        .collect();
    if !exact.is_empty() {
        return exact;
    }
    usable.into_iter().filter(|a| ends_with(a, segs)).collect()
}

fn ambiguous(path: &str, found: &[&Address], leaf: Option<&str>) -> OverrideError {
    let mut candidates: Vec<String> = found
        .iter()
        .map(|a| match leaf {
            Some(l) => format!("{}.{l}", a.joined()),
            None => a.joined(),
        })
        .collect();
    candidates.dedup();
    OverrideError::AmbiguousPath {
        path: path.to_string(),
        candidates,
    }
}

fn resolve_in<'a>(places: &'a Places, path: &'a str) -> Result<Target<'a>, OverrideError> {
    let addrs = &places.addrs;
    check_path_syntax(path).map_err(|problem| OverrideError::Malformed {
        arg: path.to_string(),
        problem,
    })?;
    let segs = segments(path);
    match matching(addrs, &segs, |_| true).as_slice() {
        [one] if one.value.is_some() => return Ok(Target::Existing(one)),
        [one] => return Err(not_a_value(addrs, one)),
        [] => {}
        many => return Err(ambiguous(path, many, None)),
    }
    let (leaf, parent) = match segs.split_last() {
        Some((leaf, parent)) if !parent.is_empty() => (*leaf, parent),
        _ => return Err(unknown_path(places, path)),
    };
    match matching(addrs, parent, |a| a.insert.is_some()).as_slice() {
        [one] => Ok(Target::New(one, leaf)),
        [] => Err(unknown_path(places, path)),
        many => Err(ambiguous(path, many, Some(leaf))),
    }
}

/// Paths with a value, to suggest and to list.
fn settable(addrs: &[Address]) -> impl Iterator<Item = &Address> {
    addrs.iter().filter(|a| a.value.is_some())
}

fn listing<'a>(paths: impl Iterator<Item = &'a Address>) -> String {
    let all: Vec<String> = paths.map(|a| format!("`{}`", a.joined())).collect();
    let mut text = all
        .iter()
        .take(LISTED_PATHS)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if all.len() > LISTED_PATHS {
        // Writing into a String cannot fail.
        write!(text, " and {} more", all.len() - LISTED_PATHS).ok();
    }
    text
}

fn unknown_path(places: &Places, path: &str) -> OverrideError {
    let addrs = &places.addrs;
    if let Some(help) = made_by_repeat(places, path) {
        return OverrideError::UnknownPath {
            path: path.to_string(),
            help,
        };
    }
    let n = segments(path).len();
    // Compare with whole paths and with their tails of the same length, so that a misspelt
    // suffix (`optimizer.lt`) finds its match as well as a misspelt full path.
    let mut candidates: Vec<String> = Vec::new();
    for a in settable(addrs) {
        candidates.push(a.joined());
        if a.path.len() > n {
            candidates.push(a.path[a.path.len() - n..].join("."));
        }
    }
    let help = match did_you_mean(path, candidates.iter().map(String::as_str)) {
        Some(best) => format!("did you mean `{best}`?"),
        None => format!(
            "paths follow the spec's nesting with dots; this spec has {}",
            listing(settable(addrs))
        ),
    };
    OverrideError::UnknownPath {
        path: path.to_string(),
        help,
    }
}

/// The help for a path that starts with the name of a layer a top-level repeat makes.
fn made_by_repeat(places: &Places, path: &str) -> Option<String> {
    let segs = segments(path);
    let (first, rest) = segs.split_first()?;
    let (kind, number) = first.rsplit_once('_')?;
    let number: u128 = number.parse().ok()?;
    let made = places
        .made
        .iter()
        .find(|m| m.kind == kind && (m.from..=m.to).contains(&number))?;
    let inside: Vec<&Address> = settable(&places.addrs)
        .filter(|a| a.path.first() == Some(&made.repeat))
        .collect();
    let example = inside
        .iter()
        .find(|a| a.path.len() > rest.len() && ends_with(a, rest) && !rest.is_empty())
        .or(inside.first())
        .map_or(made.repeat.clone(), |a| a.joined());
    Some(format!(
        "`{first}` is one of the layers `{}` makes ({kind}_{} to {kind}_{}); a layer written \
         inside a repeat is set inside it: `{example}`",
        made.repeat, made.from, made.to
    ))
}

fn not_a_value(addrs: &[Address], found: &Address) -> OverrideError {
    let inside = settable(addrs)
        .filter(|a| a.path.len() > found.path.len() && a.path.starts_with(&found.path));
    let list = listing(inside);
    let help = if list.is_empty() {
        format!("`{}` has no values to set", found.joined())
    } else {
        format!("set one of its parameters: {list}")
    };
    OverrideError::NotAValue {
        path: found.joined(),
        help,
    }
}

/// Every path of `source` that has a value, in file order.
pub fn paths(source: &str) -> Vec<String> {
    settable(&places(source).addrs)
        .map(Address::joined)
        .collect()
}

/// The full path `path` stands for in `source` (a suffix becomes the whole path; a new option
/// becomes its block's path plus its name).
pub fn resolve(source: &str, path: &str) -> Result<String, OverrideError> {
    let places = places(source);
    Ok(match resolve_in(&places, path)? {
        Target::Existing(a) => a.joined(),
        Target::New(a, leaf) => format!("{}.{leaf}", a.joined()),
    })
}

/// `source` with the value at `path` replaced by `value`, or with `leaf: value` added to the
/// block of the place the rest of the path names when `leaf` is not written.
pub fn apply(source: &str, path: &str, value: &str) -> Result<String, OverrideError> {
    let value = value.trim();
    check_value(value)?;
    let places = places(source);
    let (at, text) = match resolve_in(&places, path)? {
        Target::Existing(a) => match a.value {
            Some(span) => (span, value.to_string()),
            None => return Err(not_a_value(&places.addrs, a)),
        },
        Target::New(a, leaf) => match a.insert {
            Some(Insertion::AfterLastEntry(p)) => (Span::new(p, p), format!(", {leaf}: {value}")),
            Some(Insertion::IntoEmptyBlock(p)) => (Span::new(p, p), format!(" {leaf}: {value}")),
            Some(Insertion::NewBlock(p)) => (Span::new(p, p), format!(" {{ {leaf}: {value} }}")),
            None => return Err(unknown_path(&places, path)),
        },
    };
    let mut out = String::with_capacity(source.len() + text.len());
    out.push_str(&source[..at.start]);
    out.push_str(&text);
    out.push_str(&source[at.end..]);
    Ok(out)
}

/// Applies `(path, value)` overrides in order. Two overrides of the same place are an error.
pub fn apply_all(source: &str, overrides: &[(String, String)]) -> Result<String, OverrideError> {
    let mut resolved: Vec<String> = Vec::new();
    for (path, _) in overrides {
        let full = resolve(source, path)?;
        if resolved.contains(&full) {
            return Err(OverrideError::Duplicate {
                what: "the parameter",
                item: full,
            });
        }
        resolved.push(full);
    }
    let mut text = source.to_string();
    for (full, (_, value)) in resolved.iter().zip(overrides) {
        text = apply(&text, full, value)?;
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netc_ir::ir::{OptimizerKind, Program};

    fn beta_1(p: &Program) -> Option<f32> {
        match p.train.optimizer.kind {
            OptimizerKind::Nadam { beta_1, .. } => Some(beta_1),
            _ => None,
        }
    }

    const SPEC: &str = "model m
input cifar10 { standardize }
defaults dense { init: he_normal, activation: elu }
repeat 3 { dense 100, dropout 0.2 }
dense 10 { activation: softmax }
train {
  optimizer: nadam { lr: 5e-4 }
  batch: 32
  epochs: 10
  validation: 5000
  early_stopping { patience: 5 }
  schedule: reduce_on_plateau { patience: 2 }
}
evaluate { mc_dropout: 10 }
";

    fn program(text: &str) -> Program {
        let compiled = crate::compile(text);
        assert!(!compiled.has_errors(), "{:?}\n{text}", compiled.diags);
        compiled.program.expect("a program")
    }

    #[test]
    fn the_paths_follow_the_nesting() {
        let paths = paths(SPEC);
        for p in [
            "defaults.dense.init",
            "repeat_1.count",
            "repeat_1.dense_1.units",
            "repeat_1.dropout_1.rate",
            "dense_4.units",
            "dense_4.activation",
            "train.optimizer",
            "train.optimizer.lr",
            "train.batch",
            "train.early_stopping.patience",
            "train.schedule.patience",
            "evaluate.mc_dropout",
        ] {
            assert!(paths.iter().any(|q| q == p), "{p} missing from {paths:?}");
        }
        assert!(!paths.iter().any(|p| p == "dense_1.units"), "{paths:?}");
    }

    #[test]
    fn replaces_a_value_and_the_result_compiles_to_it() {
        let text = apply(SPEC, "train.optimizer.lr", "3e-4").unwrap();
        assert!(text.contains("optimizer: nadam { lr: 3e-4 }"), "{text}");
        assert_eq!(text.len(), SPEC.len());
        assert_eq!(program(&text).train.optimizer.lr, 3e-4);

        let text = apply(SPEC, "train.batch", "128").unwrap();
        assert_eq!(program(&text).train.batch, 128);
        let text = apply(SPEC, "train.optimizer", "adam").unwrap();
        assert_eq!(program(&text).train.optimizer.kind.name(), "adam");
    }

    #[test]
    fn augmentation_and_the_standardization_scope_can_be_set() {
        let spec = "model m
input cifar10 { standardize { per: channel } }
dense 10 { activation: softmax }
train { optimizer: adam, epochs: 1, augment { crop: 4, flip: horizontal } }
";
        let text = apply(spec, "train.augment.crop", "8").unwrap();
        assert_eq!(program(&text).train.augment.crop, 8);
        let text = apply(spec, "train.augment.flip", "none").unwrap();
        assert!(!program(&text).train.augment.flip_horizontal);
        let text = apply(spec, "standardize.per", "feature").unwrap();
        assert_eq!(
            program(&text).input.stats_scope,
            netc_ir::ir::StatsScope::Feature
        );
        assert_eq!(
            program(spec).input.stats_scope,
            netc_ir::ir::StatsScope::Channel
        );
    }

    #[test]
    fn layers_are_addressed_by_name_and_inside_their_repeat() {
        let text = apply(SPEC, "repeat_1.dense_1.units", "64").unwrap();
        assert!(
            text.contains("repeat 3 { dense 64, dropout 0.2 }"),
            "{text}"
        );
        // Three hidden layers of 64 units, then the output.
        assert_eq!(
            program(&text).param_count(),
            3072 * 64 + 64 + 2 * (64 * 64 + 64) + 650
        );
        let text = apply(SPEC, "dense_4.units", "12").unwrap();
        assert!(text.contains("dense 12 { activation: softmax }"), "{text}");
        let text = apply(SPEC, "repeat_1.count", "1").unwrap();
        assert_eq!(program(&text).param_count(), 3072 * 100 + 100 + 1010);
    }

    #[test]
    fn image_layers_are_addressed_like_dense_ones() {
        const CNN: &str = "model m
input cifar10
defaults conv2d { size: 3, padding: same }
repeat 2 { conv2d 16, max_pool }
global_avg_pool
dense 10 { activation: softmax }
train { optimizer: adam, epochs: 1 }
";
        let paths = paths(CNN);
        for p in ["defaults.conv2d.size", "repeat_1.conv2d_1.filters"] {
            assert!(paths.iter().any(|q| q == p), "{p} missing from {paths:?}");
        }
        let text = apply(CNN, "repeat_1.conv2d_1.filters", "8").unwrap();
        assert!(text.contains("repeat 2 { conv2d 8, max_pool }"), "{text}");
        // Two 3×3 convolutions, 3 → 8 → 8 channels, and the output layer on 8 means.
        let kernels = 3 * 3 * 3 * 8 + 8 + 3 * 3 * 8 * 8 + 8;
        assert_eq!(program(&text).param_count(), kernels + 8 * 10 + 10);
        let text = apply(CNN, "repeat_1.max_pool_1.strides", "1").unwrap();
        assert!(text.contains("max_pool { strides: 1 }"), "{text}");
        let err = resolve(CNN, "conv2d_2.filters").unwrap_err();
        assert!(
            matches!(&err, OverrideError::UnknownPath { help, .. }
                if help.contains("(conv2d_1 to conv2d_2)")),
            "{err:?}"
        );
    }

    #[test]
    fn inserts_an_option_that_is_not_written() {
        let text = apply(SPEC, "train.optimizer.beta_1", "0.8").unwrap();
        assert!(text.contains("nadam { lr: 5e-4, beta_1: 0.8 }"), "{text}");
        assert_eq!(beta_1(&program(&text)), Some(0.8));

        let text = apply(SPEC, "dense_4.use_bias", "false").unwrap();
        assert!(
            text.contains("{ activation: softmax, use_bias: false }"),
            "{text}"
        );
        let text = apply(SPEC, "repeat_1.dense_1.l2", "1e-4").unwrap();
        assert!(text.contains("dense 100 { l2: 1e-4 }"), "{text}");
        program(&text);
        let text = apply("model m\ntrain { }\n", "train.batch", "64").unwrap();
        assert_eq!(text, "model m\ntrain { batch: 64 }\n");
        let text = apply("train {\n  epochs: 3  # short\n}\n", "train.batch", "64").unwrap();
        assert_eq!(text, "train {\n  epochs: 3, batch: 64  # short\n}\n");
        let text = apply("dropout\ndropout 0.2\n", "dropout_1.rate", "0.3").unwrap();
        assert_eq!(text, "dropout { rate: 0.3 }\ndropout 0.2\n");
        let text = apply("dropout\ndropout 0.2\n", "dropout_2.rate", "0.3").unwrap();
        assert_eq!(text, "dropout\ndropout 0.3\n");
        let text = apply("dense 10  # out\n", "dense_1.l2", "0.1").unwrap();
        assert_eq!(text, "dense 10 { l2: 0.1 }  # out\n");
    }

    #[test]
    fn an_inserted_unknown_option_is_left_to_the_checker() {
        let text = apply(SPEC, "optimizer.momentum", "0.9").unwrap();
        let compiled = crate::compile(&text);
        assert!(
            compiled
                .diags
                .iter()
                .any(|d| d.code == "check::unknown_property"),
            "{:?}",
            compiled.diags
        );
    }

    #[test]
    fn an_unambiguous_suffix_is_enough() {
        assert_eq!(resolve(SPEC, "optimizer.lr").unwrap(), "train.optimizer.lr");
        assert_eq!(resolve(SPEC, "lr").unwrap(), "train.optimizer.lr");
        assert_eq!(resolve(SPEC, "mc_dropout").unwrap(), "evaluate.mc_dropout");
        assert_eq!(
            resolve(SPEC, "early_stopping.patience").unwrap(),
            "train.early_stopping.patience"
        );
        assert_eq!(
            resolve(SPEC, "optimizer.beta_2").unwrap(),
            "train.optimizer.beta_2"
        );
        let text = apply(SPEC, "optimizer.lr", "1e-5").unwrap();
        assert_eq!(program(&text).train.optimizer.lr, 1e-5);
    }

    #[test]
    fn an_ambiguous_suffix_lists_the_candidates() {
        let err = resolve(SPEC, "patience").unwrap_err();
        let OverrideError::AmbiguousPath { candidates, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(
            candidates,
            &["train.early_stopping.patience", "train.schedule.patience"]
        );
        assert!(
            err.to_string().contains("`train.schedule.patience`"),
            "{err}"
        );
        assert!(matches!(
            resolve(SPEC, "activation").unwrap_err(),
            OverrideError::AmbiguousPath { .. }
        ));
    }

    #[test]
    fn an_unknown_path_suggests_the_nearest() {
        let err = apply(SPEC, "trian.optimizer.lr", "1").unwrap_err();
        match &err {
            OverrideError::UnknownPath { help, .. } => {
                assert_eq!(help, "did you mean `train.optimizer.lr`?")
            }
            other => panic!("{other:?}"),
        }
        let err = resolve(SPEC, "optimiser.lr").unwrap_err();
        assert!(
            matches!(&err, OverrideError::UnknownPath { help, .. } if help == "did you mean `optimizer.lr`?"),
            "{err:?}"
        );
        // A layer made by a repeat has no top-level path; the help names the repeat's.
        let err = resolve(SPEC, "dense_2.units").unwrap_err();
        assert!(
            matches!(&err, OverrideError::UnknownPath { help, .. }
                if help.contains("(dense_1 to dense_3)") && help.ends_with("`repeat_1.dense_1.units`")),
            "{err:?}"
        );
        let err = resolve(SPEC, "zzz").unwrap_err();
        assert!(
            matches!(&err, OverrideError::UnknownPath { help, .. } if help.contains("`train.batch`"))
        );
    }

    #[test]
    fn a_block_is_not_a_value() {
        let err = apply(SPEC, "train.early_stopping", "3").unwrap_err();
        assert!(
            matches!(&err, OverrideError::NotAValue { help, .. } if help.contains("train.early_stopping.patience")),
            "{err:?}"
        );
    }

    #[test]
    fn set_arguments_split_into_path_and_values() {
        let arg = SetArg::parse("train.optimizer.lr=1e-5, 3e-5,1e-4").unwrap();
        assert_eq!(arg.path, "train.optimizer.lr");
        assert_eq!(arg.values, ["1e-5", "3e-5", "1e-4"]);
        let arg = SetArg::parse("boundaries=[5, 15],[10,20]").unwrap();
        assert_eq!(arg.values, ["[5, 15]", "[10,20]"]);
        for bad in [
            "lr", "lr=", "lr=1,,2", "=1", "a..b=1", "1a=2", "lr=1 }", "lr=1 2", "lr=1,1",
        ] {
            assert!(SetArg::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            apply(SPEC, "lr", "1e-3\nmodel x").unwrap_err(),
            OverrideError::BadValue { .. }
        ));
    }

    #[test]
    fn several_overrides_apply_in_order_and_a_place_only_once() {
        let set = |p: &str, v: &str| (p.to_string(), v.to_string());
        let text = apply_all(SPEC, &[set("lr", "1e-3"), set("train.batch", "64")]).unwrap();
        let p = program(&text);
        assert_eq!((p.train.optimizer.lr, p.train.batch), (1e-3, 64));
        let err = apply_all(SPEC, &[set("lr", "1e-3"), set("optimizer.lr", "2e-3")]).unwrap_err();
        assert!(matches!(err, OverrideError::Duplicate { .. }), "{err:?}");
    }
}
