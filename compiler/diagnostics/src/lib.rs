//! Diagnostics: what netc tells a user about a spec, and how it is rendered.
//!
//! Every diagnostic has a stable code (`netc::check::unknown_activation`, `netc::lint::...`), a
//! severity, a message, labelled spans into the file (the first is the primary one), and usually
//! a `help` saying what to write instead and a `note` with the reason. Rendering goes through
//! miette's graphical handler; golden tests render without colour at a fixed width so `.stderr`
//! files are stable.

use std::borrow::Cow;
use std::fmt;

#[cfg(feature = "render")]
use miette::{GraphicalReportHandler, GraphicalTheme};
use miette::{LabeledSpan, SourceSpan};

/// A byte range in the spec's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

impl From<Span> for SourceSpan {
    fn from(s: Span) -> Self {
        SourceSpan::new(s.start.into(), s.end - s.start)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Diag {
    /// Code without the `netc::` prefix, e.g. `check::unknown_activation`.
    pub code: String,
    pub severity: Severity,
    pub message: String,
    /// The first label is the primary one.
    pub labels: Vec<(Span, String)>,
    pub help: Option<String>,
    pub note: Option<String>,
}

impl Diag {
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Diag {
            code: code.to_string(),
            severity: Severity::Error,
            message: message.into(),
            labels: Vec::new(),
            help: None,
            note: None,
        }
    }

    pub fn warning(code: &str, message: impl Into<String>) -> Self {
        Diag {
            severity: Severity::Warning,
            ..Diag::error(code, message)
        }
    }

    pub fn with_label(mut self, span: Span, text: impl Into<String>) -> Self {
        self.labels.push((span, text.into()));
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Where the diagnostic points first; used to sort a file's diagnostics by position.
    pub fn primary_start(&self) -> usize {
        self.labels.first().map_or(0, |(s, _)| s.start)
    }
}

/// A diagnostic together with the file it points into, in the shape miette renders.
#[derive(Debug)]
pub struct SourcedDiag<'a> {
    pub diag: &'a Diag,
    pub source: &'a Excerpt<'a>,
}

impl fmt::Display for SourcedDiag<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diag.message)
    }
}

impl std::error::Error for SourcedDiag<'_> {}

impl miette::Diagnostic for SourcedDiag<'_> {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(format!("netc::{}", self.diag.code)))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diag.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        match (&self.diag.help, &self.diag.note) {
            (None, None) => None,
            (Some(h), None) => Some(Box::new(h)),
            (None, Some(n)) => Some(Box::new(format!("note: {n}"))),
            (Some(h), Some(n)) => Some(Box::new(format!("{h}\nnote: {n}"))),
        }
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(self.diag.labels.iter().enumerate().map(
            |(i, (span, text))| {
                let text = Some(text.clone()).filter(|t| !t.is_empty());
                if i == 0 {
                    LabeledSpan::new_primary_with_span(text, *span)
                } else {
                    LabeledSpan::new_with_span(text, *span)
                }
            },
        )))
    }
}

/// Renders diagnostics of one file, in order, as text. `width` wraps long lines; with
/// `color == false` the output is plain Unicode and stable across terminals. Lines longer than
/// `MAX_SHOWN_LINE` bytes are shown cut around the labels on them (`Excerpt`). Needs the
/// `render` feature (miette's graphical handler).
#[cfg(feature = "render")]
pub fn render(file_name: &str, source: &str, diags: &[Diag], width: usize, color: bool) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(width)
        .with_links(false);
    let spans = diags.iter().flat_map(|d| d.labels.iter().map(|(s, _)| *s));
    let excerpt = Excerpt::new(file_name, source, spans);
    let mut out = String::new();
    for diag in diags {
        let shown = Diag {
            labels: diag
                .labels
                .iter()
                .map(|(span, text)| (excerpt.span(*span), text.clone()))
                .collect(),
            ..diag.clone()
        };
        let sourced = SourcedDiag {
            diag: &shown,
            source: &excerpt,
        };
        if handler.render_report(&mut out, &sourced).is_err() {
            out.push_str(&format!("{}: {}\n", diag.code, diag.message));
        }
    }
    out
}

/// Lines longer than this many bytes are shown cut. miette pads an underline with a format
/// width, which panics past column 65,535, and a line of megabytes helps nobody.
pub const MAX_SHOWN_LINE: usize = 200;

/// Bytes kept on each side of a label's ends on a cut line.
const KEEP_AROUND: usize = 40;

/// What marks the bytes left out of a cut line.
const CUT_MARK: &str = " … ";

/// The text miette is shown: the spec with every line longer than `MAX_SHOWN_LINE` cut down to
/// the neighbourhood of the labels on it. Line numbers stay; the column in a diagnostic's header
/// is the one in the spec, not in the excerpt.
#[derive(Debug)]
pub struct Excerpt<'a> {
    name: String,
    original: Cow<'a, str>,
    text: String,
    /// Kept ranges: `(start in original, end in original, start in text)`, in order.
    kept: Vec<(usize, usize, usize)>,
}

// Without `render`, only `Excerpt::owned` is used (by the runtime).
#[cfg_attr(not(feature = "render"), allow(dead_code))]
impl<'a> Excerpt<'a> {
    fn new(name: &str, original: &'a str, spans: impl Iterator<Item = Span>) -> Excerpt<'a> {
        Excerpt::cut(name, Cow::Borrowed(original), spans)
    }

    fn cut(name: &str, original: Cow<'a, str>, spans: impl Iterator<Item = Span>) -> Excerpt<'a> {
        let clamp = |o: usize| o.min(original.len());
        let mut ends: Vec<usize> = spans
            .flat_map(|s| [clamp(s.start), clamp(s.end.max(s.start))])
            .collect();
        ends.sort_unstable();
        let len = original.len();
        let mut excerpt = Excerpt {
            name: name.to_string(),
            text: String::with_capacity(len.min(1 << 16)),
            original,
            kept: Vec::new(),
        };
        let mut line_start = 0;
        while line_start <= len {
            let rest = &excerpt.original[line_start..];
            let line_end = rest.find('\n').map_or(len, |i| line_start + i);
            let next = (line_end + 1).min(len + 1);
            if line_end - line_start <= MAX_SHOWN_LINE {
                excerpt.keep(line_start, next.min(len));
            } else {
                excerpt.cut_line(line_start, line_end, &ends);
                excerpt.keep(line_end, next.min(len));
            }
            line_start = next;
        }
        excerpt
    }

    /// Keeps the neighbourhoods of the label ends in `ends` (sorted) that fall on the line
    /// `start..end`, or its beginning when none does.
    fn cut_line(&mut self, start: usize, end: usize, ends: &[usize]) {
        let floor = |mut o: usize| {
            while !self.original.is_char_boundary(o) {
                o -= 1;
            }
            o
        };
        let mut windows: Vec<(usize, usize)> = ends
            .iter()
            .filter(|o| (start..=end).contains(*o))
            .map(|o| {
                let from = o.saturating_sub(KEEP_AROUND).max(start);
                (floor(from), floor((o + KEEP_AROUND).min(end)))
            })
            .collect();
        if windows.is_empty() {
            windows.push((start, floor(start + KEEP_AROUND * 2)));
        }
        let mut merged: Vec<(usize, usize)> = Vec::new();
        for (from, to) in windows {
            match merged.last_mut() {
                Some(last) if from <= last.1 => last.1 = last.1.max(to),
                _ => merged.push((from, to)),
            }
        }
        let mut at = start;
        for (from, to) in merged {
            if from > at {
                self.text.push_str(CUT_MARK);
            }
            self.keep(from, to);
            at = to;
        }
        if at < end {
            self.text.push_str(CUT_MARK);
        }
    }

    /// Keeps `from..to` of the original, each control character but tab, line feed and
    /// carriage return shown as `?` (one per byte, so offsets stay): a binary file's escape
    /// sequences must not reach the terminal.
    fn keep(&mut self, from: usize, to: usize) {
        if from < to {
            self.kept.push((from, to, self.text.len()));
            for c in self.original[from..to].chars() {
                if c.is_control() && !matches!(c, '\t' | '\n' | '\r') {
                    self.text.extend(std::iter::repeat_n('?', c.len_utf8()));
                } else {
                    self.text.push(c);
                }
            }
        }
    }

    /// Where original offset `o` is in the text: inside a kept range, or at the start of the
    /// next one (a label end is always kept).
    fn offset(&self, o: usize) -> usize {
        let i = self.kept.partition_point(|k| k.1 < o);
        match self.kept.get(i) {
            Some(&(from, _, at)) if o >= from => at + (o - from),
            Some(&(_, _, at)) => at,
            None => self.text.len(),
        }
    }

    /// Where text offset `t` came from in the original.
    fn original_offset(&self, t: usize) -> usize {
        let i = self.kept.partition_point(|k| k.2 + (k.1 - k.0) < t);
        match self.kept.get(i) {
            Some(&(from, to, at)) if t >= at => (from + (t - at)).min(to),
            Some(&(from, _, _)) => from,
            None => self.original.len(),
        }
    }

    fn span(&self, s: Span) -> Span {
        let start = self.offset(s.start.min(self.original.len()));
        let end = self.offset(s.end.max(s.start).min(self.original.len()));
        Span::new(start, end.max(start))
    }
}

impl Excerpt<'static> {
    /// An excerpt that owns its text, for a diagnostic with one label in a file other than a
    /// spec (a run's JSON or CSV files), with the label's span in the excerpt.
    pub fn owned(name: &str, text: String, label: Span) -> (Excerpt<'static>, SourceSpan) {
        let excerpt = Excerpt::cut(name, Cow::Owned(text), std::iter::once(label));
        let span = excerpt.span(label);
        (excerpt, (span.start, span.end - span.start).into())
    }
}

impl miette::SourceCode for Excerpt<'_> {
    fn read_span<'b>(
        &'b self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'b> + 'b>, miette::MietteError> {
        let contents =
            self.text
                .as_str()
                .read_span(span, context_lines_before, context_lines_after)?;
        // The header's column: bytes from the start of the original line.
        let column = if context_lines_before == 0 {
            let o = self.original_offset(span.offset());
            o - self.original[..o].rfind('\n').map_or(0, |i| i + 1)
        } else {
            contents.column()
        };
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.name.clone(),
            contents.data(),
            *contents.span(),
            contents.line(),
            column,
            contents.line_count(),
        )))
    }
}

/// "did you mean `relu`?" for a misspelt name, when one of `candidates` is close enough.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// "expected one of `a`, `b` or `c`".
pub fn one_of(candidates: &[&str]) -> String {
    let quoted: Vec<String> = candidates.iter().map(|c| format!("`{c}`")).collect();
    match quoted.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

// They render; `cargo test` at the workspace root turns `render` on (the CLI needs it).
#[cfg(all(test, feature = "render"))]
mod tests {
    use super::*;

    fn rendered(source: &str, labels: &[(usize, usize)]) -> String {
        let mut diag = Diag::error("check::example", "an example");
        for (i, (start, end)) in labels.iter().enumerate() {
            diag = diag.with_label(Span::new(*start, *end), format!("label {i}"));
        }
        render("spec.net", source, &[diag], 80, false)
    }

    #[test]
    fn labels_past_column_65535_are_shown_on_a_cut_line() {
        let pad = " ".repeat(70_000);
        let source = format!("model m\n{pad}dens 32\ndense 10\n");
        let start = source.find("dens ").expect("the label's text");
        let out = rendered(&source, &[(start, start + 4)]);
        assert!(out.contains("[spec.net:2:70001]"), "{out}");
        assert!(out.contains(" … ") && out.contains("dens 32"), "{out}");
        assert!(out.contains("label 0"), "{out}");
        assert!(out.len() < 2_000, "{} bytes", out.len());
    }

    #[test]
    fn cut_lines_keep_every_label_and_their_order() {
        // Labels at both ends of a 300,000-byte line, one spanning most of it, and a label on a
        // short line after it; multi-byte characters next to the cuts.
        let long = format!("é{}x{}ü", "ab".repeat(100_000), "ç".repeat(50_000));
        let source = format!("{long}\nshort\n");
        let x = source.find('x').expect("x");
        let short = source.find("short").expect("short");
        let out = rendered(
            &source,
            &[(x, x + 1), (1, source.len() - 8), (short, short + 5)],
        );
        for i in 0..3 {
            assert!(out.contains(&format!("label {i}")), "{out}");
        }
        assert!(out.len() < 4_000, "{} bytes", out.len());
        assert!(out.contains(&format!("[spec.net:1:{}]", x + 1)), "{out}");
    }

    #[test]
    fn short_lines_are_shown_whole() {
        let source = format!("{}\nnext line\n", "word ".repeat(MAX_SHOWN_LINE / 5));
        let out = rendered(&source, &[(5, 9)]);
        assert!(!out.contains('…'), "{out}");
        assert!(out.contains("[spec.net:1:6]"), "{out}");
    }

    #[test]
    fn a_long_line_without_labels_is_cut_at_its_start() {
        let source = format!("{}\nlabel here\n", "z".repeat(100_000));
        let at = source.find("label").expect("label");
        let out = rendered(&source, &[(at, at + 5)]);
        assert!(out.len() < 2_000, "{} bytes:\n{out}", out.len());
        assert!(out.contains("[spec.net:2:1]"), "{out}");
    }
}
