//! A command tool's argv template: each element literal text and
//! `{placeholder}`s, parsed once at load. `{{` and `}}` are literal braces.

use std::fmt;

/// Why an argv element is not a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed `{{` in `{0}`")]
    Unclosed(String),
    #[error("`{{{0}}}` is not a placeholder (use letters, digits and _)")]
    BadName(String),
    #[error("stray `}}` in `{0}` (write `}}}}` for a literal brace)")]
    Stray(String),
}

/// One argv element of a command tool, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgTemplate {
    /// As written in the actor file.
    text: String,
    pieces: Vec<Piece>,
}

/// Literal text, or the argument a placeholder names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Field(String),
}

impl ArgTemplate {
    /// Parses one element; the error names what is wrong with it.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let mut pieces: Vec<Piece> = Vec::new();
        let text = |pieces: &mut Vec<Piece>, t: &str| match pieces.last_mut() {
            Some(Piece::Text(s)) => s.push_str(t),
            _ => pieces.push(Piece::Text(t.to_string())),
        };
        let mut rest = template;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("{{") {
                text(&mut pieces, "{");
                rest = r;
            } else if let Some(r) = rest.strip_prefix("}}") {
                text(&mut pieces, "}");
                rest = r;
            } else if let Some(r) = rest.strip_prefix('{') {
                let end = r
                    .find('}')
                    .ok_or_else(|| TemplateError::Unclosed(template.to_string()))?;
                let name = &r[..end];
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(TemplateError::BadName(name.to_string()));
                }
                pieces.push(Piece::Field(name.to_string()));
                rest = &r[end + 1..];
            } else if rest.starts_with('}') {
                return Err(TemplateError::Stray(template.to_string()));
            } else {
                let end = rest.find(['{', '}']).unwrap_or(rest.len());
                text(&mut pieces, &rest[..end]);
                rest = &rest[end..];
            }
        }
        Ok(ArgTemplate {
            text: template.to_string(),
            pieces,
        })
    }

    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// The arguments its placeholders name, in order.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Field(name) => Some(name.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// A literal `--`: the program reads no options after it.
    pub fn ends_options(&self) -> bool {
        self.text == "--"
    }
}

impl fmt::Display for ArgTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(t: &str) -> Result<Vec<String>, TemplateError> {
        ArgTemplate::parse(t).map(|t| t.fields().map(str::to_string).collect())
    }

    #[test]
    fn template_errors() {
        assert_eq!(fields("{a}-{b_2}").unwrap(), ["a", "b_2"]);
        assert!(fields("{a").is_err());
        assert!(fields("a}").is_err());
        assert!(fields("{a b}").is_err());
        assert!(fields("{}").is_err());
    }

    #[test]
    fn braces_and_text_become_one_piece() {
        let t = ArgTemplate::parse("{{x}}={v}").unwrap();
        assert_eq!(
            t.pieces(),
            [Piece::Text("{x}=".into()), Piece::Field("v".into())]
        );
        assert!(ArgTemplate::parse("--").unwrap().ends_options());
        assert!(!ArgTemplate::parse("--x").unwrap().ends_options());
    }
}
