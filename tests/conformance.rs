//! The contract as data: `tests/conformance.txt` states, row by row, what every command answers
//! and what it leaves stored, at frozen instants. This runner plays the whole table against
//! each backend (the module, the Functions library through `FCALL`, the library as a script
//! through `EVALSHA`), each on its own server, and compares every reply and every stored value
//! and expiry exactly. The file's format is described at its top; the parser here is the
//! reference for it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt;

use testkit::functions::{self, Dialect};
use testkit::redis::{self, Value};
use testkit::RedisServer;

const TABLE: &str = include_str!("conformance.txt");

/// The clock at the start of every section: 1800000000.000000 s (2027-01-15T08:00:00Z).
const DEFAULT_CLOCK_MICROS: u64 = 1_800_000_000_000_000;

// ---------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------

/// A reply or a stored value, as the table writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Reply {
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Status(String),
    Array(Vec<Reply>),
    Error(String),
}

/// Bytes as the table writes them: printable ASCII as is, `"` and `\` escaped, others `\xNN`.
fn show_bytes(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Int(n) => write!(f, "{n}"),
            Reply::Bulk(bytes) => write!(f, "\"{}\"", show_bytes(bytes)),
            Reply::Nil => f.write_str("nil"),
            Reply::Status(s) if s == "OK" => f.write_str("OK"),
            Reply::Status(s) => write!(f, "+{s}"),
            Reply::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Reply::Error(text) => f.write_str(text),
        }
    }
}

/// Which backends a row applies to (its prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Only {
    All,
    Module,
    /// `FCALL` and `EVALSHA`.
    Library,
    Functions,
    Script,
}

impl Only {
    fn applies_to(self, dialect: Dialect) -> bool {
        match self {
            Only::All => true,
            Only::Module => dialect == Dialect::Module,
            Only::Library => dialect != Dialect::Module,
            Only::Functions => dialect == Dialect::Functions,
            Only::Script => dialect == Dialect::Script,
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    /// Set the clock (microseconds since the epoch).
    ClockAt(u64),
    /// Move the clock forward by microseconds.
    ClockAdvance(u64),
    /// A command of the module (or an `FCALL` line), and its reply.
    Command { words: Vec<Vec<u8>>, want: Reply },
    /// A plain Redis command, and (optionally) its reply.
    Redis { words: Vec<Vec<u8>>, want: Option<Reply> },
    /// A string key's value and absolute expiry (`None` for the value: no key).
    State { key: Vec<u8>, want: Option<(Vec<u8>, i64)> },
    /// A sorted set's members and scores in order, and its absolute expiry.
    Zset { key: Vec<u8>, want: Option<(Members, i64)> },
}

/// A sorted set's `(member, score)` pairs in `ZRANGE` order.
type Members = Vec<(Vec<u8>, i64)>;

#[derive(Clone, Debug)]
struct Row {
    line: usize,
    text: String,
    only: Only,
    step: Step,
}

#[derive(Clone, Debug)]
struct Section {
    line: usize,
    title: String,
    rows: Vec<Row>,
}

/// A parse error with the table's line number.
fn bad(line: usize, what: impl fmt::Display) -> String {
    format!("tests/conformance.txt:{line}: {what}")
}

/// Reads one escape after a backslash: `\xNN`, `\\`, `\"`, `\n`, `\r`, `\t`, `\0`.
fn escape(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>, out: &mut Vec<u8>) -> Result<(), String> {
    match chars.next().map(|(_, c)| c) {
        Some('x') => {
            let hex: String = (0..2).filter_map(|_| chars.next().map(|(_, c)| c)).collect();
            let byte = u8::from_str_radix(&hex, 16).map_err(|_| format!("bad escape \\x{hex}"))?;
            out.push(byte);
        }
        Some('\\') => out.push(b'\\'),
        Some('"') => out.push(b'"'),
        Some('n') => out.push(b'\n'),
        Some('r') => out.push(b'\r'),
        Some('t') => out.push(b'\t'),
        Some('0') => out.push(0),
        other => return Err(format!("bad escape \\{}", other.map(String::from).unwrap_or_default())),
    }
    Ok(())
}

/// Splits `text` into words (whitespace-separated; `"..."` quotes a word that may be empty or
/// hold spaces; escapes anywhere) up to an unquoted `=>`. Returns the words and the text after
/// `=>`, if there is one.
fn split_words(text: &str) -> Result<(Vec<Vec<u8>>, Option<&str>), String> {
    let mut words = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let Some(&(start, first)) = chars.peek() else { return Ok((words, None)) };
        if text[start..].starts_with("=>") && text[start + 2..].chars().next().is_none_or(char::is_whitespace) {
            return Ok((words, Some(text[start + 2..].trim())));
        }
        let mut word = Vec::new();
        if first == '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated quoted word".into()),
                    Some((_, '"')) => break,
                    Some((_, '\\')) => escape(&mut chars, &mut word)?,
                    Some((_, c)) => word.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            if chars.peek().is_some_and(|(_, c)| !c.is_whitespace()) {
                return Err("a quoted word must end at a space".into());
            }
        } else {
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    escape(&mut chars, &mut word)?;
                } else {
                    word.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
            }
        }
        words.push(word);
    }
}

/// A value: `nil`, an integer, `"bytes"`, `OK`, `+status`, or `[value, ...]`.
fn parse_value(text: &str, at: &mut usize) -> Result<Reply, String> {
    let rest = &text[*at..];
    let skip = rest.len() - rest.trim_start().len();
    *at += skip;
    let rest = &text[*at..];
    if let Some(after) = rest.strip_prefix('[') {
        *at += 1;
        let mut items = Vec::new();
        if after.trim_start().starts_with(']') {
            *at += after.len() - after.trim_start().len() + 1;
            return Ok(Reply::Array(items));
        }
        loop {
            items.push(parse_value(text, at)?);
            let rest = &text[*at..];
            *at += rest.len() - rest.trim_start().len();
            match text[*at..].chars().next() {
                Some(',') => *at += 1,
                Some(']') => {
                    *at += 1;
                    return Ok(Reply::Array(items));
                }
                _ => return Err(format!("expected , or ] at `{}`", &text[*at..])),
            }
        }
    }
    if rest.starts_with('"') {
        let mut chars = rest.char_indices().peekable();
        chars.next();
        let mut bytes = Vec::new();
        loop {
            match chars.next() {
                None => return Err("unterminated string".into()),
                Some((i, '"')) => {
                    *at += i + 1;
                    return Ok(Reply::Bulk(bytes));
                }
                Some((_, '\\')) => escape(&mut chars, &mut bytes)?,
                Some((_, c)) => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
    }
    let token_len = rest.find(|c: char| c == ',' || c == ']' || c.is_whitespace()).unwrap_or(rest.len());
    let token = &rest[..token_len];
    *at += token_len;
    match token {
        "nil" => Ok(Reply::Nil),
        "OK" => Ok(Reply::Status("OK".into())),
        _ if token.starts_with('+') => Ok(Reply::Status(token[1..].to_string())),
        _ => token.parse::<i64>().map(Reply::Int).map_err(|_| format!("not a value: `{token}`")),
    }
}

/// A whole reply: a value, or else an error text taken verbatim.
fn parse_reply(text: &str) -> Result<Reply, String> {
    let text = text.trim();
    let is_value = text.starts_with(['[', '"', '+', '-'])
        || text.starts_with(|c: char| c.is_ascii_digit())
        || text == "nil"
        || text == "OK";
    if !is_value {
        if text.is_empty() {
            return Err("missing reply after =>".into());
        }
        return Ok(Reply::Error(text.to_string()));
    }
    let mut at = 0;
    let value = parse_value(text, &mut at)?;
    if !text[at..].trim().is_empty() {
        return Err(format!("trailing text after the reply: `{}`", &text[at..]));
    }
    Ok(value)
}

/// `"value" pxat N`, or `none`, after a `state` row's `=>`.
fn parse_stored(text: &str) -> Result<Option<(Reply, i64)>, String> {
    let text = text.trim();
    if text == "none" {
        return Ok(None);
    }
    let Some(split) = text.rfind(" pxat ") else { return Err("expected `<value> pxat <ms>` or `none`".into()) };
    let value = parse_reply(&text[..split])?;
    let pxat = text[split + 6..].trim().parse::<i64>().map_err(|_| "pxat must be an integer".to_string())?;
    Ok(Some((value, pxat)))
}

fn parse_clock(text: &str) -> Result<Step, String> {
    if let Some(delta) = text.strip_prefix('+') {
        return delta.parse::<u64>().map(Step::ClockAdvance).map_err(|_| "clock +<microseconds>".into());
    }
    let (secs, micros) = text.split_once('.').ok_or("clock <seconds>.<6 digits> or clock +<microseconds>")?;
    if micros.len() != 6 {
        return Err("clock needs exactly six digits of microseconds".into());
    }
    let secs = secs.parse::<u64>().map_err(|_| "bad clock seconds")?;
    let micros = micros.parse::<u64>().map_err(|_| "bad clock microseconds")?;
    Ok(Step::ClockAt(secs * 1_000_000 + micros))
}

fn parse_row(text: &str) -> Result<(Only, Step), String> {
    let (only, body) = match text.split_once(':') {
        Some(("module", rest)) => (Only::Module, rest.trim()),
        Some(("library", rest)) => (Only::Library, rest.trim()),
        Some(("functions", rest)) => (Only::Functions, rest.trim()),
        Some(("script", rest)) => (Only::Script, rest.trim()),
        _ => (Only::All, text),
    };
    if let Some(clock) = body.strip_prefix("clock ") {
        return Ok((only, parse_clock(clock.trim())?));
    }
    let (words, reply) = split_words(body)?;
    let Some(first) = words.first() else { return Err("empty row".into()) };
    let step = match first.as_slice() {
        b"redis" => {
            let words = words[1..].to_vec();
            if words.is_empty() {
                return Err("redis needs a command".into());
            }
            Step::Redis { words, want: reply.map(parse_reply).transpose()? }
        }
        b"state" | b"zset" => {
            let [_, key] = words.as_slice() else { return Err("state/zset take exactly one key".into()) };
            let stored = parse_stored(reply.ok_or("state/zset need `=> ...`")?)?;
            if first == b"state" {
                let want = match stored {
                    None => None,
                    Some((Reply::Bulk(bytes), pxat)) => Some((bytes, pxat)),
                    Some(_) => return Err("a state is a quoted string".into()),
                };
                Step::State { key: key.clone(), want }
            } else {
                let want = match stored {
                    None => None,
                    Some((Reply::Array(pairs), pxat)) => {
                        let members = pairs
                            .into_iter()
                            .map(|pair| match pair {
                                Reply::Array(p) => match p.as_slice() {
                                    [Reply::Bulk(m), Reply::Int(s)] => Ok((m.clone(), *s)),
                                    _ => Err("a zset member is [\"member\", score]".to_string()),
                                },
                                _ => Err("a zset member is [\"member\", score]".to_string()),
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        Some((members, pxat))
                    }
                    Some(_) => return Err("a zset is [[\"member\", score], ...]".into()),
                };
                Step::Zset { key: key.clone(), want }
            }
        }
        _ => Step::Command { words, want: parse_reply(reply.ok_or("a command needs `=> reply`")?)? },
    };
    Ok((only, step))
}

fn parse_table(table: &str) -> Result<Vec<Section>, String> {
    let mut sections: Vec<Section> = Vec::new();
    for (i, raw) in table.lines().enumerate() {
        let line = i + 1;
        let text = raw.trim();
        if text.is_empty() || (text.starts_with('#') && !text.starts_with("##")) {
            continue;
        }
        if let Some(title) = text.strip_prefix("##") {
            sections.push(Section { line, title: title.trim().to_string(), rows: Vec::new() });
            continue;
        }
        let section = sections.last_mut().ok_or_else(|| bad(line, "a row before the first `## section`"))?;
        let (only, step) = parse_row(text).map_err(|e| bad(line, e))?;
        section.rows.push(Row { line, text: text.to_string(), only, step });
    }
    Ok(sections)
}

// ---------------------------------------------------------------------------------------
// Running it
// ---------------------------------------------------------------------------------------

/// A reply from the server as the table writes it (errors as their text, see
/// [`functions::reply`]).
fn to_reply(value: Value) -> Reply {
    match value {
        Value::Nil => Reply::Nil,
        Value::Int(n) => Reply::Int(n),
        Value::BulkString(bytes) => Reply::Bulk(bytes),
        Value::Array(items) | Value::Set(items) => Reply::Array(items.into_iter().map(to_reply).collect()),
        Value::Okay => Reply::Status("OK".into()),
        Value::SimpleString(s) => match s.strip_prefix("ERROR: ") {
            Some(error) => Reply::Error(error.to_string()),
            None => Reply::Status(s),
        },
        other => Reply::Status(format!("{other:?}")),
    }
}

fn show_words(words: &[Vec<u8>]) -> String {
    words
        .iter()
        .map(|w| {
            let shown = show_bytes(w);
            if w.is_empty() || shown.len() != w.len() || w.iter().any(|b| b.is_ascii_whitespace()) {
                format!("\"{shown}\"")
            } else {
                shown
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn plain_command(words: &[Vec<u8>]) -> redis::Cmd {
    let mut cmd = redis::cmd(&String::from_utf8_lossy(&words[0]));
    for word in &words[1..] {
        cmd.arg(word.as_slice());
    }
    cmd
}

/// The command for a table row's line on `dialect`: a module command through
/// [`functions::command`]; an `FCALL fn numkeys ...` line (library rows) as written, or as
/// `EVALSHA sha numkeys keys... fn args...` for the script.
fn row_command(words: &[Vec<u8>], dialect: Dialect, sha: &str) -> Result<redis::Cmd, String> {
    let name = String::from_utf8_lossy(&words[0]).to_ascii_uppercase();
    if name != "FCALL" && name != "FCALL_RO" {
        return Ok(functions::command(words, dialect, sha));
    }
    match dialect {
        Dialect::Module => Err("an FCALL row must be marked `library:` or `functions:`".into()),
        Dialect::Functions => Ok(plain_command(words)),
        Dialect::Script => {
            let [_, function, numkeys, rest @ ..] = words else { return Err("FCALL fn numkeys ...".into()) };
            let n: usize = String::from_utf8_lossy(numkeys).parse().map_err(|_| "FCALL numkeys".to_string())?;
            let n = n.min(rest.len());
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha).arg(n);
            for key in &rest[..n] {
                cmd.arg(key.as_slice());
            }
            cmd.arg(function.as_slice());
            for word in &rest[n..] {
                cmd.arg(word.as_slice());
            }
            Ok(cmd)
        }
    }
}

/// What a string key holds: `None` when it is missing, else its value and `PEXPIRETIME`
/// (a key of another type shows as its type in place of the value).
fn read_state(con: &mut redis::Connection, key: &[u8]) -> Option<(Reply, i64)> {
    let kind: String = redis::cmd("TYPE").arg(key).query(con).unwrap();
    let pxat: i64 = redis::cmd("PEXPIRETIME").arg(key).query(con).unwrap();
    match kind.as_str() {
        "none" => None,
        "string" => {
            let value: Vec<u8> = redis::cmd("GET").arg(key).query(con).unwrap();
            Some((Reply::Bulk(value), pxat))
        }
        other => Some((Reply::Status(format!("<a {other}>")), pxat)),
    }
}

/// What a sorted set holds, in order, as `[["member", score], ...]`, and its `PEXPIRETIME`.
fn read_zset(con: &mut redis::Connection, key: &[u8]) -> Option<(Reply, i64)> {
    let kind: String = redis::cmd("TYPE").arg(key).query(con).unwrap();
    let pxat: i64 = redis::cmd("PEXPIRETIME").arg(key).query(con).unwrap();
    match kind.as_str() {
        "none" => None,
        "zset" => {
            let flat: Vec<Vec<u8>> = redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).arg("WITHSCORES").query(con).unwrap();
            let pairs = flat
                .chunks(2)
                .map(|pair| {
                    let score = String::from_utf8_lossy(&pair[1]).to_string();
                    let score = score.parse::<i64>().map(Reply::Int).unwrap_or(Reply::Status(score));
                    Reply::Array(vec![Reply::Bulk(pair[0].clone()), score])
                })
                .collect();
            Some((Reply::Array(pairs), pxat))
        }
        other => Some((Reply::Status(format!("<a {other}>")), pxat)),
    }
}

fn show_stored(stored: &Option<(Reply, i64)>) -> String {
    match stored {
        None => "none".into(),
        Some((value, pxat)) => format!("{value} pxat {pxat}"),
    }
}

/// Runs every section on a server of its own with `dialect`; returns the failures.
fn run_table(dialect: Dialect, sections: &[Section]) -> (usize, Vec<String>) {
    let server = RedisServer::builder().module_args("debug-commands").start();
    let mut con = server.client();
    let source = functions::source_with_test_clock();
    functions::load(&mut con, &source);
    let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(functions::script_source(&source)).query(&mut con).unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for section in sections {
        let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap();
        let mut clock = DEFAULT_CLOCK_MICROS;
        for row in &section.rows {
            let fail = |what: String| {
                format!(
                    "tests/conformance.txt:{} [{dialect:?}] (section `{}`)\n  row:      {}\n{what}",
                    row.line, section.title, row.text
                )
            };
            match &row.step {
                Step::ClockAt(at) => clock = *at,
                Step::ClockAdvance(by) => clock += by,
                _ if !row.only.applies_to(dialect) => {}
                Step::Command { words, want } => {
                    functions::freeze_clock(&mut con, clock * 1000);
                    checked += 1;
                    let cmd = match row_command(words, dialect, &sha) {
                        Ok(cmd) => cmd,
                        Err(e) => {
                            failures.push(fail(format!("  {e}")));
                            continue;
                        }
                    };
                    let got = to_reply(functions::reply(&mut con, &cmd));
                    if &got != want {
                        let sent = cmd.args_iter().map(|a| match a {
                            redis::Arg::Simple(bytes) => bytes.to_vec(),
                            _ => b"<cursor>".to_vec(),
                        });
                        failures.push(fail(format!(
                            "  sent:     {}\n  expected: {want}\n  actual:   {got}",
                            show_words(&sent.collect::<Vec<_>>())
                        )));
                    }
                }
                Step::Redis { words, want } => {
                    functions::freeze_clock(&mut con, clock * 1000);
                    let got = to_reply(functions::reply(&mut con, &plain_command(words)));
                    if let Some(want) = want {
                        checked += 1;
                        if &got != want {
                            failures.push(fail(format!("  expected: {want}\n  actual:   {got}")));
                        }
                    } else if let Reply::Error(e) = got {
                        failures.push(fail(format!("  the Redis command failed: {e}")));
                    }
                }
                Step::State { key, want } => {
                    checked += 1;
                    let want = want.as_ref().map(|(v, pxat)| (Reply::Bulk(v.clone()), *pxat));
                    let got = read_state(&mut con, key);
                    if got != want {
                        failures.push(fail(format!(
                            "  expected: {}\n  actual:   {}",
                            show_stored(&want),
                            show_stored(&got)
                        )));
                    }
                }
                Step::Zset { key, want } => {
                    checked += 1;
                    let want = want.as_ref().map(|(members, pxat)| {
                        let pairs = members
                            .iter()
                            .map(|(m, s)| Reply::Array(vec![Reply::Bulk(m.clone()), Reply::Int(*s)]))
                            .collect();
                        (Reply::Array(pairs), *pxat)
                    });
                    let got = read_zset(&mut con, key);
                    if got != want {
                        failures.push(fail(format!(
                            "  expected: {}\n  actual:   {}",
                            show_stored(&want),
                            show_stored(&got)
                        )));
                    }
                }
            }
        }
    }
    (checked, failures)
}

fn conform(dialect: Dialect) {
    let sections = parse_table(TABLE).unwrap_or_else(|e| panic!("{e}"));
    let (checked, failures) = run_table(dialect, &sections);
    assert!(checked > 0, "no row applied to {dialect:?}");
    assert!(
        failures.is_empty(),
        "{} of {checked} rows of tests/conformance.txt fail on {dialect:?}:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    if std::env::var_os("RL_CONFORMANCE_SUMMARY").is_some() {
        for section in &sections {
            let rows = section
                .rows
                .iter()
                .filter(|r| !matches!(r.step, Step::ClockAt(_) | Step::ClockAdvance(_)) && r.only.applies_to(dialect))
                .count();
            eprintln!("{dialect:?} line {:>4}: {rows:>3} rows  {}", section.line, section.title);
        }
    }
}

#[test]
fn the_table_parses() {
    let sections = parse_table(TABLE).unwrap_or_else(|e| panic!("{e}"));
    assert!(!sections.is_empty());
    for section in &sections {
        assert!(!section.rows.is_empty(), "tests/conformance.txt:{}: an empty section", section.line);
    }
    // Every reply and state round-trips through its display, so a failure message can be
    // pasted back into the table.
    for row in sections.iter().flat_map(|s| &s.rows) {
        if let Step::Command { want, .. } = &row.step {
            assert_eq!(parse_reply(&want.to_string()).as_ref(), Ok(want), "line {}", row.line);
        }
    }
}

#[test]
fn the_module_conforms() {
    conform(Dialect::Module);
}

#[test]
fn the_functions_library_conforms() {
    conform(Dialect::Functions);
}

#[test]
fn the_library_as_a_script_conforms() {
    conform(Dialect::Script);
}
