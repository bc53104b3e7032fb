//! Text from callers, programs and MCP servers, made safe to show: what
//! reaches an operator's terminal or a readable log line carries no control
//! character that could move the cursor, retitle the window, clear the
//! screen, forge a line or reorder the text around it.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as it is: C0 controls (newline and
/// tab included), DEL, C1 controls (U+0080..U+009F; U+009B alone starts an
/// escape sequence on many terminals), and the bidirectional formatting
/// characters that make text display in another order than it reads.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// `s` with every unsafe character written as an escape (`\n`, `\t`, `\r`,
/// else `\u{XXXX}` in the JSON way, `\u009b`); borrowed when nothing needed it.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// `s` in double quotes with `"` and `\` escaped as well: a field value that
/// a reader can tell apart from the text around it.
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => push_escaped(&mut out, c),
        }
    }
    out.push('"');
    out
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if is_unsafe(c) => out.push_str(&format!("\\u{:04x}", c as u32)),
        c => out.push(c),
    }
}

/// `text` with every one of `secrets` replaced by `[redacted]`.
pub fn blank<'a>(text: &'a str, secrets: &[String]) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(text);
    for s in secrets {
        if !s.is_empty() && out.contains(s.as_str()) {
            out = Cow::Owned(out.replace(s.as_str(), "[redacted]"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_blanked() {
        let secrets = ["hunter2".to_string()];
        assert_eq!(
            blank("pw=hunter2, again hunter2", &secrets),
            "pw=[redacted], again [redacted]"
        );
        assert!(matches!(blank("nothing here", &secrets), Cow::Borrowed(_)));
    }

    #[test]
    fn control_and_bidi_characters_are_escaped() {
        assert!(matches!(printable("plain text, ünïcode"), Cow::Borrowed(_)));
        assert_eq!(
            printable("a\u{1b}]0;pwned\u{7}b"),
            "a\\u001b]0;pwned\\u0007b"
        );
        assert_eq!(printable("x\u{9b}2Jy"), "x\\u009b2Jy");
        assert_eq!(printable("del\u{7f}"), "del\\u007f");
        assert_eq!(printable("one\ntwo\r\tthree"), "one\\ntwo\\r\\tthree");
        assert_eq!(printable("\u{202e}txt.exe"), "\\u202etxt.exe");
        assert_eq!(
            quoted("say \"hi\" \\ \u{1b}"),
            "\"say \\\"hi\\\" \\\\ \\u001b\""
        );
    }
}
