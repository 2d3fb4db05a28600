//! Text → syntax tree: the pest grammar (`grammar/netc.pest`) and a generic tree of entries with
//! byte spans.
//!
//! pest pairs never leave this module. The tree knows nothing about layers or optimizers; the
//! AST builder (`ast::build`) gives names their meaning. Parsing recovers at top-level
//! statements, so every malformed statement of a file is reported, not just the first, and it
//! never recurses deeper than `MAX_DEPTH` (deeper nesting is an error, not a stack overflow).

use pest::Parser as _;

use netc_diagnostics::{Diag, Span};

/// The generated parser, in a private module so that its `Rule` type (and with it any pest pair)
/// cannot be named outside `syntax`.
mod grammar {
    #[derive(pest_derive::Parser)]
    #[grammar = "../../../grammar/netc.pest"]
    pub(super) struct Grammar;
}

use grammar::{Grammar, Rule};

/// Deepest nesting of `{` and `[` a file may have. Real specs need three or four levels.
pub const MAX_DEPTH: usize = 32;

/// Largest file netc reads, in bytes; a spec is a few hundred bytes.
pub const MAX_SOURCE_LEN: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub text: String,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// `name value* { ... }`.
    Item,
    /// `name: value { ... }`.
    Property,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub kind: EntryKind,
    pub name: Ident,
    /// Positional values of an item; exactly one for a property.
    pub args: Vec<Value>,
    pub block: Option<Block>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub entries: Vec<Entry>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub kind: ValueKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ValueKind {
    /// The literal as written (underscores removed), parsed later as an integer or a float.
    Number(String),
    Bool(bool),
    Ident(String),
    List(Vec<Value>),
}

impl ValueKind {
    /// How the value is described in "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match self {
            ValueKind::Number(n) => format!("the number `{n}`"),
            ValueKind::Bool(b) => format!("`{b}`"),
            ValueKind::Ident(s) => format!("the name `{s}`"),
            ValueKind::List(_) => "a list".to_string(),
        }
    }
}

/// `syntax::too_large`: a file over `MAX_SOURCE_LEN` bytes (`size`, when known; a reader stops
/// one byte past the limit, and a device or pipe has no size). Its label is at the start of
/// the file, so rendering it shows nothing of the contents.
pub fn too_large(size: Option<u64>) -> Diag {
    let what = match size {
        Some(n) => format!("this file is {n} bytes"),
        None => format!("this file is larger than {MAX_SOURCE_LEN} bytes"),
    };
    Diag::error(
        "syntax::too_large",
        format!("{what}; a spec may be at most {MAX_SOURCE_LEN}"),
    )
    .with_label(Span::new(0, 0), "the file starts here")
    .with_help("a `.net` file describes one model; is this the right file?")
}

/// Parses a whole file. Returns the entries of every well-formed top-level statement, and one
/// diagnostic per malformed one.
pub fn parse(source: &str) -> (Vec<Entry>, Vec<Diag>) {
    if source.len() > MAX_SOURCE_LEN {
        return (Vec::new(), vec![too_large(Some(source.len() as u64))]);
    }
    let mut entries = Vec::new();
    let mut diags = Vec::new();
    for chunk in split_statements(source, &mut diags) {
        match Grammar::parse(Rule::statement, &source[chunk.start..chunk.end]) {
            Ok(mut pairs) => {
                let statement = pairs
                    .next()
                    .expect("the statement rule always yields one pair");
                let entry = statement
                    .into_inner()
                    .find(|p| matches!(p.as_rule(), Rule::item | Rule::property))
                    .expect("a statement holds exactly one entry");
                entries.push(build_entry(entry, chunk.start));
            }
            Err(err) => diags.push(syntax_error(source, chunk, &err)),
        }
    }
    (entries, diags)
}

/// Cuts the file into top-level statements at separators outside braces and brackets, checking
/// balance and depth on the way (so the recursive parser only sees bounded nesting).
fn split_statements(source: &str, diags: &mut Vec<Diag>) -> Vec<Span> {
    let mut chunks = Vec::new();
    let mut open: Vec<(char, usize)> = Vec::new();
    let mut start = 0;
    let mut too_deep = false;
    let mut skip_until_top = false;
    let mut chars = source.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '#' => {
                while chars.peek().is_some_and(|&(_, c)| c != '\n') {
                    chars.next();
                }
            }
            '{' | '[' => {
                open.push((c, i));
                if open.len() > MAX_DEPTH && !too_deep {
                    too_deep = true;
                    skip_until_top = true;
                    diags.push(
                        Diag::error(
                            "syntax::too_deep",
                            format!("nesting deeper than {MAX_DEPTH} levels"),
                        )
                        .with_label(Span::new(i, i + 1), "this opens level 33")
                        .with_help("specs need a few levels of `{ }` at most; flatten this"),
                    );
                }
            }
            '}' | ']' => {
                let expected = if c == '}' { '{' } else { '[' };
                match open.last() {
                    Some(&(o, _)) if o == expected => {
                        open.pop();
                    }
                    Some(&(o, at)) => {
                        diags.push(
                            Diag::error("syntax::unbalanced", format!("`{c}` closes `{o}`"))
                                .with_label(Span::new(i, i + 1), "this closes")
                                .with_label(Span::new(at, at + 1), "this, which it does not match")
                                .with_help(format!("close `{o}` with `{}`", closing(o))),
                        );
                        return chunks;
                    }
                    None => {
                        diags.push(
                            Diag::error("syntax::unbalanced", format!("unmatched `{c}`"))
                                .with_label(Span::new(i, i + 1), "nothing is open here")
                                .with_help(format!("remove it, or add the `{expected}` it closes")),
                        );
                        skip_until_top = true;
                        start = i + 1;
                        continue;
                    }
                }
                if open.is_empty() && too_deep {
                    too_deep = false;
                }
            }
            '\n' | ',' | ';' if open.is_empty() => {
                if !skip_until_top {
                    push_chunk(source, &mut chunks, start, i);
                }
                skip_until_top = false;
                start = i + 1;
            }
            _ => {}
        }
    }
    if let Some(&(o, at)) = open.first() {
        diags.push(
            Diag::error("syntax::unbalanced", format!("unclosed `{o}`"))
                .with_label(Span::new(at, at + 1), "opened here, never closed")
                .with_help(format!("add `{}` where this block ends", closing(o))),
        );
    } else if !skip_until_top {
        push_chunk(source, &mut chunks, start, source.len());
    }
    chunks
}

fn closing(open: char) -> char {
    if open == '{' {
        '}'
    } else {
        ']'
    }
}

fn push_chunk(source: &str, chunks: &mut Vec<Span>, start: usize, end: usize) {
    let text = &source[start..end];
    let blank = text
        .lines()
        .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'));
    if !blank {
        chunks.push(Span::new(start, end));
    }
}

fn syntax_error(source: &str, chunk: Span, err: &pest::error::Error<Rule>) -> Diag {
    let offset = match err.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let at = chunk.start + offset;
    let found = match source[at..].chars().next() {
        None => "the end of the file".to_string(),
        Some('\n') | Some('\r') => "the end of the line".to_string(),
        Some(c) if c.is_control() => format!("the control character U+{:04X}", c as u32),
        Some(c) => format!("`{c}`"),
    };
    let expected = match &err.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => describe_rules(positives),
        pest::error::ErrorVariant::CustomError { message } => message.clone(),
    };
    let len = source[at..].chars().next().map_or(0, char::len_utf8);
    Diag::error(
        "syntax::unexpected",
        format!("expected {expected}, found {found}"),
    )
    .with_label(Span::new(at, at + len), format!("expected {expected}"))
    .with_help(
        "an entry is `name value... { ... }` or `name: value`, one per line; \
             see docs/language.md",
    )
}

fn describe_rules(rules: &[Rule]) -> String {
    let mut names: Vec<&str> = rules
        .iter()
        .filter_map(|r| match r {
            Rule::ident | Rule::item | Rule::property => Some("a name"),
            Rule::number => Some("a number"),
            Rule::boolean => Some("`true` or `false`"),
            Rule::list => Some("a list `[...]`"),
            Rule::block => Some("`{`"),
            Rule::EOI => Some("the end of the statement"),
            _ => None,
        })
        .collect();
    names.dedup();
    match names.as_slice() {
        [] => "something else".to_string(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

fn span_of(pair: &pest::iterators::Pair<'_, Rule>, base: usize) -> Span {
    let s = pair.as_span();
    Span::new(base + s.start(), base + s.end())
}

fn build_entry(pair: pest::iterators::Pair<'_, Rule>, base: usize) -> Entry {
    let kind = match pair.as_rule() {
        Rule::property => EntryKind::Property,
        _ => EntryKind::Item,
    };
    let span = span_of(&pair, base);
    let mut inner = pair.into_inner();
    let name_pair = inner.next().expect("an entry starts with its name");
    let name = Ident {
        text: name_pair.as_str().to_string(),
        span: span_of(&name_pair, base),
    };
    let mut args = Vec::new();
    let mut block = None;
    for p in inner {
        if p.as_rule() == Rule::block {
            let span = span_of(&p, base);
            let entries = p.into_inner().map(|e| build_entry(e, base)).collect();
            block = Some(Block { entries, span });
        } else {
            args.push(build_value(p, base));
        }
    }
    Entry {
        kind,
        name,
        args,
        block,
        span,
    }
}

fn build_value(pair: pest::iterators::Pair<'_, Rule>, base: usize) -> Value {
    let span = span_of(&pair, base);
    let kind = match pair.as_rule() {
        Rule::number => ValueKind::Number(pair.as_str().replace('_', "")),
        Rule::boolean => ValueKind::Bool(pair.as_str() == "true"),
        Rule::list => ValueKind::List(pair.into_inner().map(|v| build_value(v, base)).collect()),
        _ => ValueKind::Ident(pair.as_str().to_string()),
    };
    Value { kind, span }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.name.text.as_str()).collect()
    }

    #[test]
    fn parses_items_properties_blocks_and_lists() {
        let src = "model m\nrepeat 2 { dense 10 { activation: elu }, dropout 0.5 }\n\
                   train { schedule: piecewise_constant { boundaries: [1, 2], values: [1e-3, 1e-4, 1e-5] } }\n";
        let (entries, diags) = parse(src);
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(names(&entries), ["model", "repeat", "train"]);
        let repeat = &entries[1];
        assert_eq!(repeat.args[0].kind, ValueKind::Number("2".into()));
        let body = &repeat.block.as_ref().unwrap().entries;
        assert_eq!(names(body), ["dense", "dropout"]);
        assert_eq!(
            &src[body[0].span.start..body[0].span.end],
            "dense 10 { activation: elu }"
        );
    }

    #[test]
    fn reports_every_bad_statement() {
        let (entries, diags) = parse("model m\ndense 10 { 3 }\ndense : 3 :\ndropout 0.2\n");
        assert_eq!(names(&entries), ["model", "dropout"]);
        assert_eq!(diags.len(), 2, "{diags:?}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let src = format!(
            "model m\nx {}{}\n",
            "{".repeat(100_000),
            "}".repeat(100_000)
        );
        let (_, diags) = parse(&src);
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].code, "syntax::too_deep");
    }

    #[test]
    fn unbalanced_braces() {
        assert_eq!(parse("a {\n").1[0].code, "syntax::unbalanced");
        assert_eq!(parse("a }\nb 1\n").1[0].code, "syntax::unbalanced");
        assert_eq!(parse("a { [ } ]\n").1[0].code, "syntax::unbalanced");
    }

    #[test]
    fn garbage_never_panics() {
        for src in [
            "",
            "\0\0\0",
            "}}}}",
            "[[[",
            "a: [1,",
            "1e99999",
            "é ü ∑ {",
            "\r\n\r\n",
            "a\u{0}b",
        ] {
            let _ = parse(src);
        }
    }
}
