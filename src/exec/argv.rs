//! A command tool's argv, rendered from its template and validated arguments.
//!
//! No shell, ever: one `{placeholder}` becomes part of exactly one argv
//! element. An element whose placeholder has no value (an optional argument
//! left out) is dropped whole.

use serde_json::{Map, Value};

use crate::config::{ArgTemplate, Piece};

/// Linux refuses a single argv string longer than this (MAX_ARG_STRLEN, 32 pages).
pub const MAX_ARG_LEN: usize = 128 * 1024 - 1;

/// Why arguments cannot become an argv.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgvError {
    #[error("Argument `{field}` must be a string, number or boolean.")]
    NotScalar { field: String },
    #[error("Argument `{field}` starts with `-`, where the program would read it as an option.")]
    LeadingDash { field: String },
    #[error("An argument contains a NUL byte, which cannot be passed to a program.")]
    Nul,
    #[error(
        "An argument is {len} bytes long; a program's argument can be at most {MAX_ARG_LEN} bytes."
    )]
    TooLong { len: usize, fields: String },
    #[error("Argument `{field}` is a whole number too large to pass exactly ({value}); the largest is 2^53 unless it is an integer JSON can carry exactly.")]
    Inexact { field: String, value: String },
    #[error("The arguments and environment come to {total} bytes; a program can be started with at most {max} (ARG_MAX).")]
    TooBig { total: usize, max: usize },
}

/// A number's text in an argv: integers as integers (`5.0` is `5`), other
/// numbers as the shortest text that reads back as the same value. A whole
/// number JSON parsing had to round (beyond 2^53 and outside i64/u64) has
/// no exact text and is refused.
fn number_text(field: &str, n: &serde_json::Number) -> Result<String, ArgvError> {
    if n.is_i64() || n.is_u64() {
        return Ok(n.to_string());
    }
    let x = n.as_f64().unwrap_or(f64::NAN);
    if x.fract() != 0.0 || !x.is_finite() {
        return Ok(n.to_string());
    }
    const EXACT: f64 = (1u64 << 53) as f64;
    if x.abs() <= EXACT {
        Ok(format!("{}", x as i64))
    } else {
        Err(ArgvError::Inexact {
            field: field.to_string(),
            value: n.to_string(),
        })
    }
}

/// Checks that `argv` and `env` fit what `execve` accepts: Linux counts
/// every string with its NUL and a pointer to it against ARG_MAX. Beyond it
/// the spawn would fail with E2BIG, which is the caller's doing, not an
/// internal error to count against the tool.
pub fn fits(program: &str, argv: &[String], env: &[(String, String)]) -> Result<(), ArgvError> {
    let pointer = std::mem::size_of::<usize>();
    let total = program.len()
        + 1
        + argv.iter().map(|a| a.len() + 1 + pointer).sum::<usize>()
        + env
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2 + pointer)
            .sum::<usize>();
    let max = arg_max();
    if total > max {
        return Err(ArgvError::TooBig { total, max });
    }
    Ok(())
}

/// The kernel's limit on argv plus environment, with room for the auxiliary
/// vector and the program's own name (sysconf, else Linux's floor of 128 KiB).
fn arg_max() -> usize {
    let reported = nix::unistd::sysconf(nix::unistd::SysconfVar::ARG_MAX)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(128 * 1024);
    reported.saturating_sub(4096)
}

/// Renders the template with the arguments.
///
/// Option injection: before a literal `--` element, an element that starts
/// with a placeholder is where the program looks for options, so a value
/// starting with `-` is refused there (after `--`, or behind literal text such
/// as `--name={x}`, it is only ever data).
pub fn render(
    template: &[ArgTemplate],
    args: &Map<String, Value>,
) -> Result<Vec<String>, ArgvError> {
    let mut argv = Vec::with_capacity(template.len());
    let mut options_ended = false;
    for element in template {
        let mut out = String::new();
        let mut missing = false;
        // The placeholder the element starts with, if it starts with one.
        let mut leading = None;
        for piece in element.pieces() {
            let name = match piece {
                Piece::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                Piece::Field(name) => name.as_str(),
            };
            let value = match args.get(name) {
                None | Some(Value::Null) => {
                    missing = true;
                    continue;
                }
                Some(Value::String(s)) => std::borrow::Cow::Borrowed(s.as_str()),
                Some(Value::Number(n)) => number_text(name, n)?.into(),
                Some(Value::Bool(b)) => b.to_string().into(),
                Some(_) => {
                    return Err(ArgvError::NotScalar {
                        field: name.to_string(),
                    })
                }
            };
            if out.is_empty() && value.starts_with('-') {
                leading.get_or_insert(name);
            }
            out.push_str(&value);
        }
        if let (Some(name), false) = (leading, options_ended) {
            return Err(ArgvError::LeadingDash {
                field: name.to_string(),
            });
        }
        options_ended |= element.ends_options();
        if out.contains('\0') {
            return Err(ArgvError::Nul);
        }
        if out.len() > MAX_ARG_LEN {
            return Err(ArgvError::TooLong {
                len: out.len(),
                fields: element.fields().collect::<Vec<_>>().join(","),
            });
        }
        if !missing {
            argv.push(out);
        }
    }
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn template(elements: &[&str]) -> Vec<ArgTemplate> {
        elements
            .iter()
            .map(|e| ArgTemplate::parse(e).unwrap())
            .collect()
    }

    #[test]
    fn one_placeholder_is_one_argv_element() {
        let t = template(&["-h", "{path}", "--depth={n}", "{{literal}}"]);
        let argv = render(
            &t,
            &args(json!({"path": "/tmp; rm -rf / $(id) `id`", "n": 3})),
        )
        .unwrap();
        assert_eq!(
            argv,
            ["-h", "/tmp; rm -rf / $(id) `id`", "--depth=3", "{literal}"]
        );
    }

    #[test]
    fn missing_optional_argument_drops_its_element() {
        let t = template(&["a", "--n={n}", "{path}"]);
        assert_eq!(render(&t, &args(json!({"path": "x"}))).unwrap(), ["a", "x"]);
    }

    #[test]
    fn whole_numbers_render_as_integers_exactly_or_not_at_all() {
        let t = template(&["{n}"]);
        let one = |text: &str| {
            let v: Value = serde_json::from_str(&format!("{{\"n\":{text}}}")).unwrap();
            render(&t, v.as_object().unwrap())
        };
        assert_eq!(one("5.0").unwrap(), ["5"]);
        assert_eq!(one("0.5").unwrap(), ["0.5"]);
        assert_eq!(
            one("18446744073709551615").unwrap(),
            ["18446744073709551615"]
        );
        assert_eq!(one("9007199254740992.0").unwrap(), ["9007199254740992"]);
        assert_eq!(one("1e3").unwrap(), ["1000"]);
        assert!(matches!(
            one("12345678901234567890123"),
            Err(ArgvError::Inexact { .. })
        ));
    }

    #[test]
    fn argv_and_environment_must_fit_arg_max() {
        let env = vec![("PATH".to_string(), "/usr/bin".to_string())];
        assert!(fits("/bin/echo", &["hi".to_string()], &env).is_ok());
        // Values just under the per-string limit: each fine, together not
        // (18 of them on a machine with the default 8 MiB stack limit).
        let big = vec!["x".repeat(MAX_ARG_LEN); arg_max() / MAX_ARG_LEN + 1];
        assert!(matches!(
            fits("/bin/echo", &big, &env),
            Err(ArgvError::TooBig { .. })
        ));
    }

    #[test]
    fn structured_values_and_nul_bytes_are_refused() {
        let t = template(&["{x}"]);
        let e = render(&t, &args(json!({"x": [1, 2]}))).unwrap_err();
        assert_eq!(e, ArgvError::NotScalar { field: "x".into() });
        let e = render(&t, &args(json!({"x": "a\u{0}b"}))).unwrap_err();
        assert_eq!(e, ArgvError::Nul);
    }

    #[test]
    fn a_leading_dash_is_refused_where_options_are_read() {
        let t = template(&["{a}", "--n={a}", "--", "{b}"]);
        for hostile in [json!("-rf"), json!("--output=/etc/passwd"), json!(-5)] {
            let e = render(&t, &args(json!({"a": hostile, "b": "x"}))).unwrap_err();
            assert_eq!(e, ArgvError::LeadingDash { field: "a".into() }, "{hostile}");
        }
        // Behind literal text, after `--`, or not at the start: only data.
        assert_eq!(
            render(&t, &args(json!({"a": "x-y", "b": "-rf"}))).unwrap(),
            ["x-y", "--n=x-y", "--", "-rf"]
        );
        let t = template(&["pre{a}"]);
        assert_eq!(render(&t, &args(json!({"a": "-x"}))).unwrap(), ["pre-x"]);
    }
}
