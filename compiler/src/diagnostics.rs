//! Diagnostics: what netc tells a user about a spec, and how it is rendered.
//!
//! Every diagnostic has a stable code (`netc::check::unknown_activation`, `netc::lint::...`), a
//! severity, a message, labelled spans into the file (the first is the primary one), and usually
//! a `help` saying what to write instead and a `note` with the reason. Rendering goes through
//! miette's graphical handler; golden tests render without colour at a fixed width so `.stderr`
//! files are stable.

use std::fmt;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};

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
    pub source: &'a NamedSource<String>,
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
/// `color == false` the output is plain Unicode and stable across terminals.
pub fn render(file_name: &str, source: &str, diags: &[Diag], width: usize, color: bool) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(width)
        .with_links(false);
    let named = NamedSource::new(file_name, source.to_string());
    let mut out = String::new();
    for diag in diags {
        let sourced = SourcedDiag {
            diag,
            source: &named,
        };
        if handler.render_report(&mut out, &sourced).is_err() {
            out.push_str(&format!("{}: {}\n", diag.code, diag.message));
        }
    }
    out
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
