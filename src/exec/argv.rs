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
                Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string().into(),
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
