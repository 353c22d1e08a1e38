//! How text an agent chose is shown to a person: in the console, at the CLI, in a notification.
//!
//! Owns: which characters are shown escaped (`\u{202e}`) instead of as themselves — control characters
//! (which would move a terminal's cursor or retitle its window) and the invisible and direction-changing
//! ones (zero-width spaces and joiners, bidirectional embeddings, overrides and isolates, the byte-order mark),
//! with which an agent could make a value read differently from its bytes (RIGHT-TO-LEFT OVERRIDE before `0006` shows as `6000`).
//! Must not: change what is stored, judged or forwarded; this is presentation only.

use std::borrow::Cow;

/// A character shown escaped: invisible, or changing the direction of the text around it.
fn hidden(c: char) -> bool {
    matches!(c,
        '\u{061C}'                      // Arabic letter mark
        | '\u{180E}'                    // Mongolian vowel separator
        | '\u{200B}'..='\u{200F}'       // zero-width space, non-joiner, joiner; LRM, RLM
        | '\u{202A}'..='\u{202E}'       // embeddings and overrides
        | '\u{2060}'..='\u{2069}'       // word joiner, invisible operators, isolates
        | '\u{FEFF}'                    // zero-width no-break space (BOM)
    )
}

/// `text` with control, invisible and direction-changing characters escaped; newlines and tabs are kept
/// when `keep_lines` (a multi-line value shown as such).
pub fn reveal(text: &str, keep_lines: bool) -> Cow<'_, str> {
    let escape =
        |c: char| (c.is_control() && !(keep_lines && (c == '\n' || c == '\t'))) || hidden(c);
    if !text.chars().any(escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escape(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Every string (and object key) in `value` passed through [`reveal`], keeping newlines.
pub fn reveal_all(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) => {
            if let Cow::Owned(shown) = reveal(s, true) {
                *s = shown;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(reveal_all),
        Value::Object(map) => {
            let old = std::mem::take(map);
            for (k, mut v) in old {
                reveal_all(&mut v);
                map.insert(reveal(&k, true).into_owned(), v);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_person_sees_is_what_the_bytes_are() {
        assert_eq!(reveal("6000", false), "6000");
        assert!(matches!(reveal("plain", false), Cow::Borrowed(_)));
        assert_eq!(reveal("\u{202e}0006", false), "\\u{202e}0006");
        assert_eq!(reveal("a\u{200b}b\u{feff}", false), "a\\u{200b}b\\u{feff}");
        assert_eq!(reveal("x\u{1b}[2J", false), "x\\u{1b}[2J");
        assert_eq!(reveal("two\nlines", true), "two\nlines");
        assert_eq!(reveal("two\nlines", false), "two\\u{a}lines");
        let mut v = serde_json::json!({"k\u{2066}": ["\u{202d}x", 1], "n": null});
        reveal_all(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"k\\u{2066}": ["\\u{202d}x", 1], "n": null})
        );
    }
}
