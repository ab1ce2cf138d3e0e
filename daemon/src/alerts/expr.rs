//! Alert conditions: the part of PromQL that alert rules need, parsed and
//! type-checked when the rules file is read, and evaluated every tick on the
//! sampler's latest samples and a short window of earlier ones.
//!
//! Grammar (lowest precedence first; binary operators are left-associative):
//!
//! ```text
//! expr    = expr ("or") expr | expr ("and" | "unless") expr
//!         | expr ("==" | "!=" | ">" | "<" | ">=" | "<=") expr
//!         | expr ("+" | "-") expr | expr ("*" | "/") expr
//!         | ("-" | "+") expr | "(" expr ")" | number | selector | call
//! selector = metric [ "{" [ label ("=" | "!=") string { "," ... } ] "}" ]
//! call    = ("rate" | "increase" | "avg_over_time" | "min_over_time"
//!           | "max_over_time") "(" selector "[" duration "]" ")"
//! ```
//!
//! Series are matched between two sides on identical label sets (the metric
//! name is not a label). Comparisons filter, keeping the left side's value
//! (the series' value where one side is a number). Unlike Prometheus,
//! `increase` and `rate` do not extrapolate to the range's edges, and a
//! counter series that appears while gpuvisord runs counts from 0, so its
//! first value is an increase (the first XID error of a kind fires at once).

use crate::telemetry::Sample;
use gpuvisor_admin::metrics::Kind;
use gpuvisor_admin::time::{format_duration, parse_duration};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;

pub type Labels = BTreeMap<String, String>;

/// Why an expression did not parse, with where in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (line {line}, column {column} of the expression)")]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    pub label: String,
    pub op: MatchOp,
    pub value: String,
}

impl Matcher {
    /// A missing label matches as the empty string, as in Prometheus.
    fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.label).map_or("", String::as_str);
        (v == self.value) == (self.op == MatchOp::Equal)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<Matcher>,
}

impl Selector {
    fn matches(&self, labels: &Labels) -> bool {
        self.matchers.iter().all(|m| m.matches(labels))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Rate,
    Increase,
    AvgOverTime,
    MinOverTime,
    MaxOverTime,
}

impl Func {
    const ALL: [Func; 5] = [Func::Rate, Func::Increase, Func::AvgOverTime, Func::MinOverTime, Func::MaxOverTime];

    fn name(self) -> &'static str {
        match self {
            Func::Rate => "rate",
            Func::Increase => "increase",
            Func::AvgOverTime => "avg_over_time",
            Func::MinOverTime => "min_over_time",
            Func::MaxOverTime => "max_over_time",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    And,
    Unless,
    Or,
}

impl BinOp {
    fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And | BinOp::Unless => 2,
            BinOp::Eq | BinOp::Ne | BinOp::Gt | BinOp::Lt | BinOp::Ge | BinOp::Le => 3,
            BinOp::Add | BinOp::Sub => 4,
            BinOp::Mul | BinOp::Div => 5,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Gt => ">",
            BinOp::Lt => "<",
            BinOp::Ge => ">=",
            BinOp::Le => "<=",
            BinOp::And => "and",
            BinOp::Unless => "unless",
            BinOp::Or => "or",
        }
    }

    fn is_comparison(self) -> bool {
        self.precedence() == 3
    }

    fn is_set(self) -> bool {
        matches!(self, BinOp::And | BinOp::Unless | BinOp::Or)
    }

    fn arith(self, a: f64, b: f64) -> f64 {
        match self {
            BinOp::Add => a + b,
            BinOp::Sub => a - b,
            BinOp::Mul => a * b,
            BinOp::Div => a / b,
            _ => f64::NAN,
        }
    }

    fn compare(self, a: f64, b: f64) -> bool {
        match self {
            BinOp::Eq => a == b,
            BinOp::Ne => a != b,
            BinOp::Gt => a > b,
            BinOp::Lt => a < b,
            BinOp::Ge => a >= b,
            BinOp::Le => a <= b,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Number(f64),
    Selector(Selector),
    Call { func: Func, selector: Selector, range_s: f64 },
    Neg(Box<Expr>),
    Binary { op: BinOp, lhs: Box<Expr>, rhs: Box<Expr> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Scalar,
    Vector,
}

// ---- tokens ----

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Number(f64),
    Str(String),
    /// Seconds.
    Duration(f64),
    LBrace,
    RBrace,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Assign,
    Op(BinOp),
    Regex,
    Unsupported(char),
    Eof,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Number(n) => write!(f, "number {n}"),
            Tok::Str(s) => write!(f, "string {s:?}"),
            Tok::Duration(d) => write!(f, "duration {}", format_duration(std::time::Duration::from_secs_f64(*d))),
            Tok::LBrace => f.write_str("`{`"),
            Tok::RBrace => f.write_str("`}`"),
            Tok::LParen => f.write_str("`(`"),
            Tok::RParen => f.write_str("`)`"),
            Tok::LBracket => f.write_str("`[`"),
            Tok::RBracket => f.write_str("`]`"),
            Tok::Comma => f.write_str("`,`"),
            Tok::Assign => f.write_str("`=`"),
            Tok::Op(op) => write!(f, "`{}`", op.symbol()),
            Tok::Regex => f.write_str("a regex matcher"),
            Tok::Unsupported(c) => write!(f, "`{c}`"),
            Tok::Eof => f.write_str("the end of the expression"),
        }
    }
}

struct Token {
    tok: Tok,
    pos: usize,
}

fn position(text: &str, pos: usize) -> (usize, usize) {
    let before = &text[..pos.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn error(text: &str, pos: usize, message: impl Into<String>) -> ParseError {
    let (line, column) = position(text, pos);
    ParseError { line, column, message: message.into() }
}

fn tokenize(text: &str) -> Result<Vec<Token>, ParseError> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let two = text.get(i..i + 2).unwrap_or("");
        let (tok, len) = match (c, two) {
            (_, "==") => (Tok::Op(BinOp::Eq), 2),
            (_, "!=") => (Tok::Op(BinOp::Ne), 2),
            (_, ">=") => (Tok::Op(BinOp::Ge), 2),
            (_, "<=") => (Tok::Op(BinOp::Le), 2),
            (_, "=~") | (_, "!~") => (Tok::Regex, 2),
            (b'>', _) => (Tok::Op(BinOp::Gt), 1),
            (b'<', _) => (Tok::Op(BinOp::Lt), 1),
            (b'+', _) => (Tok::Op(BinOp::Add), 1),
            (b'-', _) => (Tok::Op(BinOp::Sub), 1),
            (b'*', _) => (Tok::Op(BinOp::Mul), 1),
            (b'/', _) => (Tok::Op(BinOp::Div), 1),
            (b'=', _) => (Tok::Assign, 1),
            (b'{', _) => (Tok::LBrace, 1),
            (b'}', _) => (Tok::RBrace, 1),
            (b'(', _) => (Tok::LParen, 1),
            (b')', _) => (Tok::RParen, 1),
            (b'[', _) => (Tok::LBracket, 1),
            (b']', _) => (Tok::RBracket, 1),
            (b',', _) => (Tok::Comma, 1),
            (b'"' | b'\'' | b'`', _) => {
                let (s, len) = string(text, i)?;
                (Tok::Str(s), len)
            }
            (c, _) if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                    i += 1;
                }
                let word = &text[start..i];
                let tok = match word.to_ascii_lowercase().as_str() {
                    "and" => Tok::Op(BinOp::And),
                    "or" => Tok::Op(BinOp::Or),
                    "unless" => Tok::Op(BinOp::Unless),
                    "inf" => Tok::Number(f64::INFINITY),
                    "nan" => Tok::Number(f64::NAN),
                    _ => Tok::Ident(word.to_owned()),
                };
                out.push(Token { tok, pos: start });
                continue;
            }
            (c, _) if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) => {
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                // Digits followed by a unit are a duration (`5m`, `1h30m`).
                if i < b.len() && b"smhdwy".contains(&b[i]) && c != b'.' {
                    while i < b.len() && b[i].is_ascii_alphanumeric() {
                        i += 1;
                    }
                    let word = &text[start..i];
                    let d = parse_duration(word).map_err(|e| error(text, start, e.to_string()))?;
                    out.push(Token { tok: Tok::Duration(d.as_secs_f64()), pos: start });
                    continue;
                }
                if i < b.len() && b[i] == b'.' {
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                    let mut j = i + 1;
                    if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
                        j += 1;
                    }
                    if j < b.len() && b[j].is_ascii_digit() {
                        i = j;
                        while i < b.len() && b[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                }
                if i < b.len() && (b[i].is_ascii_alphabetic() || b[i] == b'_') {
                    return Err(error(
                        text,
                        start,
                        format!(
                            "`{}` is neither a number nor a duration (units ms, s, m, h, d, w, y)",
                            &text[start..=i]
                        ),
                    ));
                }
                let n: f64 = text[start..i]
                    .parse()
                    .map_err(|_| error(text, start, format!("bad number {}", &text[start..i])))?;
                out.push(Token { tok: Tok::Number(n), pos: start });
                continue;
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                (Tok::Unsupported(ch), ch.len_utf8())
            }
        };
        out.push(Token { tok, pos: start });
        i = start + len;
    }
    out.push(Token { tok: Tok::Eof, pos: text.len() });
    Ok(out)
}

/// A quoted string at `start`: its value and its length in the text.
fn string(text: &str, start: usize) -> Result<(String, usize), ParseError> {
    let quote = text.as_bytes()[start] as char;
    let mut out = String::new();
    let mut chars = text[start + 1..].char_indices();
    while let Some((k, c)) = chars.next() {
        match c {
            c if c == quote => return Ok((out, k + 2)),
            '\\' if quote != '`' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, c @ ('\\' | '"' | '\''))) => out.push(c),
                Some((k2, c)) => {
                    return Err(error(text, start + 1 + k2, format!("unknown escape \\{c} in a string")));
                }
                None => break,
            },
            '\n' if quote != '`' => break,
            c => out.push(c),
        }
    }
    Err(error(text, start, "string not closed"))
}

// ---- parser ----

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token>,
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        // tokenize always ends with Eof, and `next` never passes it.
        &self.tokens[self.at.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> &Token {
        let i = self.at.min(self.tokens.len() - 1);
        if self.at < self.tokens.len() - 1 {
            self.at += 1;
        }
        &self.tokens[i]
    }

    fn fail<T>(&self, pos: usize, message: impl Into<String>) -> Result<T, ParseError> {
        Err(error(self.text, pos, message))
    }

    fn expect(&mut self, want: Tok, what: &str) -> Result<(), ParseError> {
        let t = self.next();
        if t.tok == want {
            return Ok(());
        }
        let (pos, found) = (t.pos, t.tok.to_string());
        self.fail(pos, format!("expected {what}, found {found}"))
    }

    fn expr(&mut self, min_prec: u8) -> Result<(Expr, Type), ParseError> {
        let (mut lhs, mut lt) = self.unary()?;
        loop {
            let (op, pos) = match self.peek() {
                Token { tok: Tok::Op(op), pos } if op.precedence() >= min_prec => (*op, *pos),
                _ => break,
            };
            self.next();
            if let Tok::Ident(word) = &self.peek().tok {
                let modifier = word.as_str();
                if ["bool", "on", "ignoring", "group_left", "group_right"].contains(&modifier) {
                    let p = self.peek().pos;
                    return self
                        .fail(p, format!("`{modifier}` is not supported: series are matched on identical labels"));
                }
            }
            let (rhs, rt) = self.expr(op.precedence() + 1)?;
            let ty = match (op, lt, rt) {
                (op, Type::Scalar, _) | (op, _, Type::Scalar) if op.is_set() => {
                    return self.fail(pos, format!("`{}` needs series on both sides, not a number", op.symbol()));
                }
                (op, Type::Scalar, Type::Scalar) if op.is_comparison() => {
                    return self.fail(
                        pos,
                        format!("`{}` between two numbers would need `bool`, which is not supported", op.symbol()),
                    );
                }
                (_, Type::Scalar, Type::Scalar) => Type::Scalar,
                _ => Type::Vector,
            };
            lhs = Expr::Binary { op, lhs: Box::new(lhs), rhs: Box::new(rhs) };
            lt = ty;
        }
        Ok((lhs, lt))
    }

    fn unary(&mut self) -> Result<(Expr, Type), ParseError> {
        match self.peek().tok {
            Tok::Op(BinOp::Sub) => {
                self.next();
                let (e, t) = self.unary()?;
                Ok(match e {
                    Expr::Number(n) => (Expr::Number(-n), t),
                    e => (Expr::Neg(Box::new(e)), t),
                })
            }
            Tok::Op(BinOp::Add) => {
                self.next();
                self.unary()
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<(Expr, Type), ParseError> {
        let Token { tok, pos } = self.next();
        let (tok, pos) = (tok.clone(), *pos);
        match tok {
            Tok::Number(n) => Ok((Expr::Number(n), Type::Scalar)),
            Tok::LParen => {
                let inner = self.expr(0)?;
                self.expect(Tok::RParen, "`)`")?;
                Ok(inner)
            }
            Tok::Ident(name) if self.peek().tok == Tok::LParen => self.call(&name, pos),
            Tok::Ident(name) => {
                let selector = self.selector(name)?;
                if self.peek().tok == Tok::LBracket {
                    let p = self.peek().pos;
                    return self.fail(
                        p,
                        "a range `[...]` goes inside rate(), increase(), avg_over_time(), min_over_time() or \
                         max_over_time()",
                    );
                }
                Ok((Expr::Selector(selector), Type::Vector))
            }
            Tok::LBrace => self.fail(pos, "a selector needs a metric name before `{`"),
            Tok::Duration(_) => self.fail(pos, "a duration belongs in a range, like rate(metric[5m])"),
            Tok::Regex => self.fail(pos, "regex matchers (=~, !~) are not supported"),
            other => self.fail(pos, format!("expected a number, a metric or a function, found {other}")),
        }
    }

    fn selector(&mut self, metric: String) -> Result<Selector, ParseError> {
        let mut matchers = Vec::new();
        if self.peek().tok != Tok::LBrace {
            return Ok(Selector { metric, matchers });
        }
        self.next();
        loop {
            let Token { tok, pos } = self.next();
            let (tok, pos) = (tok.clone(), *pos);
            let label = match tok {
                Tok::RBrace => break,
                Tok::Ident(l) => l,
                other => return self.fail(pos, format!("expected a label name or `}}`, found {other}")),
            };
            let Token { tok, pos } = self.next();
            let (tok, pos) = (tok.clone(), *pos);
            let op = match tok {
                Tok::Assign => MatchOp::Equal,
                Tok::Op(BinOp::Ne) => MatchOp::NotEqual,
                Tok::Regex => return self.fail(pos, "regex matchers (=~, !~) are not supported"),
                other => return self.fail(pos, format!("expected `=` or `!=` after {label}, found {other}")),
            };
            let Token { tok, pos } = self.next();
            let (tok, pos) = (tok.clone(), *pos);
            let value = match tok {
                Tok::Str(v) => v,
                other => return self.fail(pos, format!("expected a quoted value for {label}, found {other}")),
            };
            matchers.push(Matcher { label, op, value });
            let Token { tok, pos } = self.next();
            let (tok, pos) = (tok.clone(), *pos);
            match tok {
                Tok::Comma => continue,
                Tok::RBrace => break,
                other => return self.fail(pos, format!("expected `,` or `}}`, found {other}")),
            }
        }
        Ok(Selector { metric, matchers })
    }

    fn call(&mut self, name: &str, pos: usize) -> Result<(Expr, Type), ParseError> {
        let Some(func) = Func::ALL.into_iter().find(|f| f.name() == name) else {
            let known: Vec<&str> = Func::ALL.iter().map(|f| f.name()).collect();
            return self.fail(pos, format!("unknown function {name}(): supported are {}", known.join(", ")));
        };
        self.expect(Tok::LParen, "`(`")?;
        let Token { tok, pos } = self.next();
        let (tok, pos) = (tok.clone(), *pos);
        let Tok::Ident(metric) = tok else {
            return self.fail(pos, format!("{}() takes a metric with a range, like {}(metric[5m])", name, name));
        };
        let selector = self.selector(metric)?;
        self.expect(Tok::LBracket, "a range like `[5m]`")?;
        let Token { tok, pos } = self.next();
        let (tok, pos) = (tok.clone(), *pos);
        let range_s = match tok {
            Tok::Duration(d) if d > 0.0 => d,
            other => return self.fail(pos, format!("expected a duration like 5m, found {other}")),
        };
        self.expect(Tok::RBracket, "`]`")?;
        self.expect(Tok::RParen, "`)`")?;
        Ok((Expr::Call { func, selector, range_s }, Type::Vector))
    }
}

impl Expr {
    /// Parses an alert condition: it must select series (a bare number
    /// would alert on nothing).
    pub fn parse(text: &str) -> Result<Expr, ParseError> {
        let mut p = Parser { text, tokens: tokenize(text)?, at: 0 };
        if p.peek().tok == Tok::Eof {
            return p.fail(0, "the expression is empty");
        }
        let (e, ty) = p.expr(0)?;
        let t = p.peek();
        if t.tok != Tok::Eof {
            return p.fail(t.pos, format!("unexpected {} after a complete expression", t.tok));
        }
        if ty == Type::Scalar {
            return p.fail(0, "the expression is a number; an alert needs series, like `metric > 1`");
        }
        Ok(e)
    }

    /// The metrics it reads through a range, with the longest range.
    pub fn ranges(&self, out: &mut HashMap<String, f64>) {
        match self {
            Expr::Call { selector, range_s, .. } => {
                let e = out.entry(selector.metric.clone()).or_insert(0.0);
                *e = e.max(*range_s);
            }
            Expr::Neg(e) => e.ranges(out),
            Expr::Binary { lhs, rhs, .. } => {
                lhs.ranges(out);
                rhs.ranges(out);
            }
            Expr::Number(_) | Expr::Selector(_) => {}
        }
    }

    fn precedence(&self) -> u8 {
        match self {
            Expr::Binary { op, .. } => op.precedence(),
            _ => u8::MAX,
        }
    }

    fn write(&self, f: &mut fmt::Formatter<'_>, parent: u8, right: bool) -> fmt::Result {
        let prec = self.precedence();
        let parens = prec < parent || (prec == parent && right);
        if parens {
            f.write_str("(")?;
        }
        match self {
            Expr::Number(n) if n.is_nan() => f.write_str("NaN")?,
            Expr::Number(n) if n.is_infinite() => f.write_str(if *n > 0.0 { "Inf" } else { "-Inf" })?,
            Expr::Number(n) => write!(f, "{n}")?,
            Expr::Selector(s) => write!(f, "{s}")?,
            Expr::Call { func, selector, range_s } => write!(
                f,
                "{}({selector}[{}])",
                func.name(),
                format_duration(std::time::Duration::from_secs_f64(*range_s))
            )?,
            Expr::Neg(e) => {
                f.write_str("-")?;
                e.write(f, u8::MAX, false)?;
            }
            Expr::Binary { op, lhs, rhs } => {
                lhs.write(f, prec, false)?;
                write!(f, " {} ", op.symbol())?;
                rhs.write(f, prec, true)?;
            }
        }
        if parens {
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.metric)?;
        if !self.matchers.is_empty() {
            f.write_str("{")?;
            for (i, m) in self.matchers.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                let op = if m.op == MatchOp::Equal { "=" } else { "!=" };
                write!(f, "{}{op}{:?}", m.label, m.value)?;
            }
            f.write_str("}")?;
        }
        Ok(())
    }
}

/// The normalized text: single spaces around operators, parentheses only
/// where precedence needs them; it parses back to the same expression.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, 0, false)
    }
}

// ---- evaluation ----

/// Earlier samples of the series read through a range, for as long as the
/// longest range needs them.
#[derive(Debug, Default)]
pub struct Window {
    /// Seconds kept, by metric.
    keep: HashMap<String, f64>,
    series: HashMap<String, HashMap<Labels, SeriesWindow>>,
    ticks: u64,
}

#[derive(Debug, Default)]
struct SeriesWindow {
    samples: VecDeque<(f64, f64)>,
    /// When a counter series first appeared, if after the first tick: it
    /// counted from 0 then.
    born_at: Option<f64>,
}

impl Window {
    /// A window for the ranges of `exprs`.
    pub fn for_exprs<'a>(exprs: impl IntoIterator<Item = &'a Expr>) -> Window {
        let mut keep = HashMap::new();
        for e in exprs {
            e.ranges(&mut keep);
        }
        Window { keep, ..Default::default() }
    }

    /// The longest range kept, in seconds.
    pub fn longest(&self) -> f64 {
        self.keep.values().copied().fold(0.0, f64::max)
    }

    /// Adds a tick's samples and forgets those no range reaches.
    pub fn push(&mut self, now: f64, samples: &[Sample]) {
        for s in samples {
            if !self.keep.contains_key(&s.metric) {
                continue;
            }
            let by_labels = self.series.entry(s.metric.clone()).or_default();
            if !by_labels.contains_key(&s.labels) {
                let born_at = (self.ticks > 0 && s.kind == Kind::Counter).then_some(now);
                by_labels.insert(s.labels.clone(), SeriesWindow { samples: VecDeque::new(), born_at });
            }
            if let Some(w) = by_labels.get_mut(&s.labels) {
                w.samples.push_back((now, s.value));
            }
        }
        for (metric, by_labels) in &mut self.series {
            let keep = self.keep.get(metric).copied().unwrap_or(0.0);
            for w in by_labels.values_mut() {
                while w.samples.front().is_some_and(|&(t, _)| t <= now - keep) {
                    w.samples.pop_front();
                }
            }
            by_labels.retain(|_, w| !w.samples.is_empty());
        }
        self.ticks += 1;
    }
}

/// A tick's samples by metric, for instant selectors.
pub struct Instant<'a> {
    by_metric: HashMap<&'a str, Vec<&'a Sample>>,
}

impl<'a> Instant<'a> {
    pub fn new(samples: &'a [Sample]) -> Instant<'a> {
        let mut by_metric: HashMap<&str, Vec<&Sample>> = HashMap::new();
        for s in samples {
            by_metric.entry(s.metric.as_str()).or_default().push(s);
        }
        Instant { by_metric }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    Vector(Vec<(Labels, f64)>),
}

impl Expr {
    /// Evaluates at `now` on this tick's samples and the window.
    pub fn eval(&self, now: f64, instant: &Instant<'_>, window: &Window) -> Value {
        match self {
            Expr::Number(n) => Value::Scalar(*n),
            Expr::Selector(sel) => Value::Vector(
                instant
                    .by_metric
                    .get(sel.metric.as_str())
                    .into_iter()
                    .flatten()
                    .filter(|s| sel.matches(&s.labels))
                    .map(|s| (s.labels.clone(), s.value))
                    .collect(),
            ),
            Expr::Call { func, selector, range_s } => {
                let mut out = Vec::new();
                for (labels, w) in window.series.get(&selector.metric).into_iter().flatten() {
                    if !selector.matches(labels) {
                        continue;
                    }
                    if let Some(v) = over_range(*func, w, now, *range_s) {
                        out.push((labels.clone(), v));
                    }
                }
                Value::Vector(out)
            }
            Expr::Neg(e) => match e.eval(now, instant, window) {
                Value::Scalar(n) => Value::Scalar(-n),
                Value::Vector(v) => Value::Vector(v.into_iter().map(|(l, x)| (l, -x)).collect()),
            },
            Expr::Binary { op, lhs, rhs } => {
                binary(*op, lhs.eval(now, instant, window), rhs.eval(now, instant, window))
            }
        }
    }
}

/// A range function over a series' samples in `(now - range, now]`.
fn over_range(func: Func, w: &SeriesWindow, now: f64, range: f64) -> Option<f64> {
    let start = now - range;
    let pts: Vec<(f64, f64)> = w.samples.iter().copied().filter(|&(t, _)| t > start && t <= now).collect();
    let (first, last) = (pts.first()?, pts.last()?);
    match func {
        Func::Rate | Func::Increase => {
            // A series born inside the range counted from 0 at its birth.
            let mut prev = w.born_at.filter(|&b| b > start).map(|_| 0.0);
            if prev.is_none() && pts.len() < 2 {
                return None;
            }
            let mut increase = 0.0;
            for &(_, v) in &pts {
                if let Some(p) = prev {
                    increase += if v >= p { v - p } else { v };
                }
                prev = Some(v);
            }
            if func == Func::Increase {
                return Some(increase);
            }
            let span = last.0 - first.0;
            Some(increase / if span > 0.0 { span } else { range })
        }
        Func::AvgOverTime => Some(pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64),
        Func::MinOverTime => Some(pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min)),
        Func::MaxOverTime => Some(pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max)),
    }
}

fn binary(op: BinOp, lhs: Value, rhs: Value) -> Value {
    match (lhs, rhs) {
        (Value::Scalar(a), Value::Scalar(b)) => Value::Scalar(op.arith(a, b)),
        (Value::Vector(v), Value::Scalar(b)) => Value::Vector(
            v.into_iter()
                .filter_map(|(l, a)| {
                    if op.is_comparison() {
                        op.compare(a, b).then_some((l, a))
                    } else {
                        Some((l, op.arith(a, b)))
                    }
                })
                .collect(),
        ),
        (Value::Scalar(a), Value::Vector(v)) => Value::Vector(
            v.into_iter()
                .filter_map(|(l, b)| {
                    if op.is_comparison() {
                        op.compare(a, b).then_some((l, b))
                    } else {
                        Some((l, op.arith(a, b)))
                    }
                })
                .collect(),
        ),
        (Value::Vector(a), Value::Vector(b)) => {
            let right: HashMap<&Labels, f64> = b.iter().map(|(l, v)| (l, *v)).collect();
            let out = match op {
                BinOp::And => a.into_iter().filter(|(l, _)| right.contains_key(l)).collect(),
                BinOp::Unless => a.into_iter().filter(|(l, _)| !right.contains_key(l)).collect(),
                BinOp::Or => {
                    let left: HashSet<&Labels> = a.iter().map(|(l, _)| l).collect();
                    let extra: Vec<(Labels, f64)> = b.iter().filter(|(l, _)| !left.contains(l)).cloned().collect();
                    a.iter().cloned().chain(extra).collect()
                }
                op if op.is_comparison() => {
                    a.into_iter().filter(|(l, x)| right.get(l).is_some_and(|y| op.compare(*x, *y))).collect()
                }
                op => a.into_iter().filter_map(|(l, x)| right.get(&l).map(|y| (l, op.arith(x, *y)))).collect(),
            };
            Value::Vector(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(metric: &str, labels: &[(&str, &str)], v: f64) -> Sample {
        Sample::new(metric, Kind::Gauge, labels, v)
    }

    fn c(metric: &str, labels: &[(&str, &str)], v: f64) -> Sample {
        Sample::new(metric, Kind::Counter, labels, v)
    }

    /// Evaluates `text` on `samples` (and a window fed `history`, one tick a
    /// second before them); returns each result's `vm` label (or `-`) and value.
    fn eval(text: &str, history: &[Vec<Sample>], samples: &[Sample]) -> Vec<(String, f64)> {
        let e = Expr::parse(text).unwrap();
        let mut w = Window::for_exprs([&e]);
        let mut now = 1000.0;
        for tick in history {
            w.push(now, tick);
            now += 1.0;
        }
        w.push(now, samples);
        let Value::Vector(v) = e.eval(now, &Instant::new(samples), &w) else { panic!("a number") };
        let mut out: Vec<(String, f64)> =
            v.into_iter().map(|(l, x)| (l.get("vm").cloned().unwrap_or_else(|| "-".into()), x)).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn parse_err(text: &str) -> ParseError {
        Expr::parse(text).unwrap_err()
    }

    #[test]
    fn precedence_and_normalized_text() {
        let e = Expr::parse("a{vm=\"x\",class!='y'} < 0.9*b   and c==1 or d").unwrap();
        assert_eq!(e.to_string(), "a{vm=\"x\", class!=\"y\"} < 0.9 * b and c == 1 or d");
        assert_eq!(Expr::parse(&e.to_string()).unwrap(), e);
        let e = Expr::parse("(a + b) * 2 - -c / (d - e)").unwrap();
        assert_eq!(e.to_string(), "(a + b) * 2 - -c / (d - e)");
        let e = Expr::parse("increase(x_total{gpu=\"0\"}[1h30m]) > 0 # a comment\n").unwrap();
        assert_eq!(e.to_string(), "increase(x_total{gpu=\"0\"}[1h30m]) > 0");
    }

    #[test]
    fn errors_say_what_and_where() {
        let e = parse_err("a >\n  b{vm=}");
        assert_eq!((e.line, e.column), (2, 8));
        assert!(e.message.contains("quoted value for vm"), "{e}");
        assert!(parse_err("rate(a)").message.contains("a range like `[5m]`"));
        assert!(parse_err("a[5m]").message.contains("goes inside rate()"));
        assert!(parse_err("sum(a)").message.contains("unknown function sum()"));
        assert!(parse_err("a =~ \"x\"").message.contains("regex"));
        assert!(parse_err("1 > 2").message.contains("bool"));
        assert!(parse_err("a and 1").message.contains("series on both sides"));
        assert!(parse_err("2 * 3").message.contains("an alert needs series"));
        assert!(parse_err("a > bool 1").message.contains("`bool` is not supported"));
        assert!(parse_err("a b").message.contains("unexpected `b`"));
        assert!(parse_err("a{vm=\"x}").message.contains("not closed"));
        assert!(parse_err("rate(a[5q])").message.contains("duration"));
        assert!(parse_err("").message.contains("empty"));
    }

    #[test]
    fn comparisons_filter_and_keep_the_left_value() {
        let now = [s("share", &[("vm", "a")], 0.2), s("share", &[("vm", "b")], 0.6)];
        assert_eq!(eval("share < 0.5", &[], &now), vec![("a".into(), 0.2)]);
        assert_eq!(eval("0.5 < share", &[], &now), vec![("b".into(), 0.6)]);
        assert_eq!(eval("share * 2 >= 1.2", &[], &now), vec![("b".into(), 1.2)]);
        assert_eq!(eval("share{vm!=\"a\"}", &[], &now), vec![("b".into(), 0.6)]);
        assert_eq!(eval("share{missing=\"\"}", &[], &now).len(), 2, "a missing label matches the empty string");
    }

    #[test]
    fn vectors_match_on_identical_labels() {
        let now = [
            s("used", &[("vm", "a")], 0.2),
            s("used", &[("vm", "b")], 0.5),
            s("due", &[("vm", "a")], 0.5),
            s("due", &[("vm", "b")], 0.5),
            s("busy", &[("vm", "a")], 1.0),
            s("busy", &[("vm", "b")], 0.0),
        ];
        assert_eq!(eval("used < 0.9 * due", &[], &now), vec![("a".into(), 0.2)]);
        assert_eq!(eval("used / due", &[], &now), vec![("a".into(), 0.4), ("b".into(), 1.0)]);
        assert_eq!(eval("used < 0.9 * due and busy == 1", &[], &now), vec![("a".into(), 0.2)]);
        assert_eq!(eval("used unless busy == 1", &[], &now), vec![("b".into(), 0.5)]);
        assert_eq!(eval("used > 0.3 or busy == 1", &[], &now), vec![("a".into(), 1.0), ("b".into(), 0.5)]);
        // Labels must be identical: nothing matches a series with an extra one.
        let other = [s("x", &[("vm", "a"), ("gpu", "0")], 1.0), s("y", &[("vm", "a")], 1.0)];
        assert!(eval("x + y", &[], &other).is_empty());
    }

    #[test]
    fn increase_and_rate_count_resets_and_new_series_from_zero() {
        let tick = |v: f64| vec![c("n_total", &[("vm", "a")], v)];
        // 1 s apart: 5, 7, then a reset to 1, then 4.
        let history = [tick(5.0), tick(7.0), tick(1.0)];
        assert_eq!(eval("increase(n_total[10s])", &history, &tick(4.0)), vec![("a".into(), 2.0 + 1.0 + 3.0)]);
        assert_eq!(eval("rate(n_total[10s])", &history, &tick(4.0)), vec![("a".into(), 6.0 / 3.0)]);
        // Only the samples inside the range: the last two.
        assert_eq!(eval("increase(n_total[1500ms])", &history, &tick(4.0)), vec![("a".into(), 3.0)]);
        // One sample of a series present from the start: no increase yet.
        assert!(eval("increase(n_total[10s])", &[], &tick(4.0)).is_empty());
        // A series that appears later counted from 0: the first XID fires.
        let xid = |n: &str, v: f64| c("xid_total", &[("xid", n)], v);
        let history = [vec![xid("none", 0.0)], vec![xid("none", 0.0)]];
        let got = eval("increase(xid_total[10m]) > 0", &history, &[xid("none", 0.0), xid("13", 1.0)]);
        assert_eq!(got, vec![("-".into(), 1.0)]);
    }

    #[test]
    fn over_time_functions_read_the_window() {
        let tick = |v: f64| vec![s("busy", &[("vm", "a")], v)];
        let history = [tick(1.0), tick(0.0), tick(1.0)];
        assert_eq!(eval("avg_over_time(busy[10s])", &history, &tick(1.0)), vec![("a".into(), 0.75)]);
        assert_eq!(eval("min_over_time(busy[10s])", &history, &tick(1.0)), vec![("a".into(), 0.0)]);
        assert_eq!(eval("min_over_time(busy[2s])", &history, &tick(1.0)), vec![("a".into(), 1.0)]);
        assert_eq!(eval("max_over_time(busy[10s]) == 1", &history, &tick(1.0)), vec![("a".into(), 1.0)]);
    }
}
