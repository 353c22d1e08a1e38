//! Policy data files (`data.json`, `data.yaml`) read so that they mean the same to tollgate and to OPA.
//!
//! Owns: the check that a YAML data file has no value whose type depends on the YAML version. tollgate
//! reads YAML as 1.2 (regorus, through yaml_serde); OPA reads it as YAML 1.1 (go-yaml v2 behind
//! `sigs.k8s.io/yaml`), where the plain (unquoted) scalars `y`, `n`, `yes`, `no`, `on`, `off` (and their
//! capitalised forms) are booleans, `0777` is octal, `1_000` and `0x1F` are integers, and every key is
//! turned into a string. A reviewer testing the bundle with `opa test` would then judge other data than
//! tollgate serves. So a plain scalar that either reading could take for something else is refused, with
//! file, line and value: quote it (`"n"`, `"0777"`) or write it in JSON's own syntax.
//! Must not: decide anything about policy; it only reads text.

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;

/// The YAML 1.1 booleans go-yaml v2 knows that YAML 1.2 reads as strings (`true`/`false` in their three
/// spellings are booleans in both).
const YAML11_BOOLEANS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];
/// Plain scalars both readings take for null, or for a boolean.
const NULLS: &[&str] = &["", "~", "null", "Null", "NULL"];
const BOOLEANS: &[&str] = &["true", "True", "TRUE", "false", "False", "FALSE"];

/// One plain scalar the two YAML readings do not agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ambiguity {
    /// 1-based line of the scalar.
    pub line: usize,
    pub value: String,
    pub why: &'static str,
}

/// Every plain scalar of `text` whose meaning depends on the YAML version (or that OPA would turn into a
/// string key where tollgate keeps another type), in document order. A text that does not parse is an
/// error (the data loader reports the parser's own message for it).
pub fn ambiguous_scalars(text: &str) -> Result<Vec<Ambiguity>, String> {
    let mut parser = Parser::new_from_str(text);
    let mut found = Vec::new();
    // For each open collection: `Some(next_is_key)` for a mapping, `None` for a sequence.
    let mut stack: Vec<Option<bool>> = Vec::new();
    loop {
        let (event, mark) = parser.next_token().map_err(|e| e.to_string())?;
        // Whether this event is a mapping key; a mapping's next entry alternates key and value.
        let is_key = match stack.last_mut() {
            Some(Some(next_is_key)) => {
                let key = *next_is_key;
                if !matches!(event, Event::MappingEnd) {
                    *next_is_key = !key;
                }
                key
            }
            _ => false,
        };
        match event {
            Event::StreamEnd => break,
            Event::MappingStart(_, tag) | Event::SequenceStart(_, tag) if tag.is_some() => {
                found.push(Ambiguity {
                    line: mark.line(),
                    value: String::from("!tag"),
                    why: "an explicit YAML tag: the two YAML readings resolve tags differently: remove it",
                });
                // Parsing stops at the first error the caller reports; the structure after it is moot.
                stack.push(None);
            }
            Event::MappingStart(..) => stack.push(Some(true)),
            Event::SequenceStart(..) => stack.push(None),
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            Event::Scalar(value, style, _, tag) => {
                let why = if tag.is_some() {
                    Some(
                        "an explicit YAML tag: the two YAML readings resolve tags differently: remove it",
                    )
                } else if style == TScalarStyle::Plain {
                    plain_ambiguity(&value, is_key)
                } else {
                    None
                };
                if let Some(why) = why {
                    found.push(Ambiguity {
                        line: mark.line(),
                        value,
                        why,
                    });
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

/// Why a plain scalar reads differently under YAML 1.1 (OPA) and YAML 1.2 (tollgate), if it does.
fn plain_ambiguity(value: &str, is_key: bool) -> Option<&'static str> {
    if YAML11_BOOLEANS.contains(&value) {
        return Some(
            "a boolean under YAML 1.1 (OPA), a string under YAML 1.2 (tollgate): quote it for a string",
        );
    }
    if is_key && value == "<<" {
        return Some(
            "a merge key: YAML 1.1 (OPA) merges it, YAML 1.2 (tollgate) keeps it as a key: write the entries out",
        );
    }
    let numeric = looks_numeric(value);
    if numeric && !is_json_number(value) {
        return Some(
            "a number the two YAML readings take differently (octal, underscores, hexadecimal, \
             sexagesimal, a sign, .inf): write it as a JSON number, or quote it for a string",
        );
    }
    if is_key && (numeric || NULLS.contains(&value) || BOOLEANS.contains(&value)) {
        return Some(
            "a key that is not a string: OPA turns it into a string, tollgate does not: quote it",
        );
    }
    None
}

/// Whether either reading takes the plain scalar for a number: go-yaml v2 (underscores dropped, then Go's
/// integer syntax with `0x`/`0o`/`0b` prefixes and leading-zero octal, or a float), YAML 1.2's core schema,
/// YAML's infinities and not-a-number, and YAML 1.1's sexagesimal `1:20`. (Dates stay strings in both.)
fn looks_numeric(value: &str) -> bool {
    if matches!(
        value.to_ascii_lowercase().as_str(),
        ".inf" | "-.inf" | "+.inf" | ".nan"
    ) {
        return true;
    }
    let plain: String = value.chars().filter(|c| *c != '_').collect();
    let unsigned = plain.strip_prefix(['-', '+']).unwrap_or(&plain);
    let all = |s: &str, f: fn(char) -> bool| !s.is_empty() && s.chars().all(f);
    let prefixed = |p: &[&str], f: fn(char) -> bool| {
        p.iter()
            .any(|p| unsigned.strip_prefix(p).is_some_and(|rest| all(rest, f)))
    };
    all(unsigned, |c| c.is_ascii_digit())
        || prefixed(&["0x", "0X"], |c| c.is_ascii_hexdigit())
        || prefixed(&["0o", "0O"], |c| ('0'..='7').contains(&c))
        || prefixed(&["0b", "0B"], |c| c == '0' || c == '1')
        || is_float(unsigned)
        || is_sexagesimal(unsigned)
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, go-yaml v2's float syntax (without the sign).
fn is_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => digits(int) && digits(frac) && (!int.is_empty() || !frac.is_empty()),
        None => !mantissa.is_empty() && digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok
}

/// YAML 1.1's base-60 numbers: digits, then `:` groups of digits (`1:20`, `190:20:30.15`).
fn is_sexagesimal(s: &str) -> bool {
    let mut parts = s.split(':');
    let first = parts.next().unwrap_or_default();
    let digits = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit() || c == '.');
    s.contains(':') && digits(first) && parts.all(digits)
}

/// JSON's number syntax (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`), which both readings take for the
/// same number.
fn is_json_number(value: &str) -> bool {
    let b = value.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if b.first() == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(c) if c.is_ascii_digit() => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Vec<(usize, String)> {
        ambiguous_scalars(text)
            .unwrap()
            .into_iter()
            .map(|a| (a.line, a.value))
            .collect()
    }

    #[test]
    fn yaml11_booleans_octals_and_friends_are_found_with_their_line() {
        let text = "\
# a comment
fold:
  nn: n
  yy: y
  quoted: \"n\"
  single: 'off'
flags: [yes, No, ON, true, false, null, ~]
mode: 0777
big: 1_000
hex: 0x1F
clock: 1:20
oct: 0o17
plus: +12
inf: .inf
fine: [0, -3, 2.5, 1e3, 10, abc, n1, \"0777\", 82e64a83756745bb, 09b2857d, 2026-11-30]
block: |
  yes
";
        assert_eq!(
            values(text),
            vec![
                (3, "n".to_string()),
                (4, "y".to_string()),
                (7, "yes".to_string()),
                (7, "No".to_string()),
                (7, "ON".to_string()),
                (8, "0777".to_string()),
                (9, "1_000".to_string()),
                (10, "0x1F".to_string()),
                (11, "1:20".to_string()),
                (12, "0o17".to_string()),
                (13, "+12".to_string()),
                (14, ".inf".to_string()),
            ]
        );
    }

    #[test]
    fn keys_must_be_strings_under_both_readings() {
        let text = "y: 1\n1: a\nnull: b\ntrue: c\n\"2\": d\nok: e\n<<: {a: 1}\n";
        assert_eq!(
            values(text),
            vec![
                (1, "y".to_string()),
                (2, "1".to_string()),
                (3, "null".to_string()),
                (4, "true".to_string()),
                (7, "<<".to_string()),
            ]
        );
    }

    #[test]
    fn tags_are_refused_and_broken_yaml_is_an_error() {
        assert_eq!(values("a: !!str yes\n"), vec![(1, "yes".to_string())]);
        assert_eq!(values("a: !!set {x: 1}\n"), vec![(1, "!tag".to_string())]);
        assert!(ambiguous_scalars("a: [1, 2\n").is_err());
    }

    #[test]
    fn json_numbers() {
        for ok in [
            "0", "-0", "12", "-12", "2.5", "0.25", "1e3", "1E-3", "2.5e+10",
        ] {
            assert!(is_json_number(ok), "{ok}");
        }
        for bad in [
            "", "-", "01", "1.", ".5", "+1", "1_0", "0x1", "1e", "1:2", "1.2.3",
        ] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }
}
