use std::fmt;

/// A problem in one piece of campaign text. `line`/`column` are 1-based and
/// relative to the text named by `source` (e.g. `segment[0].rule`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Diagnostic {
    pub source: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl Diagnostic {
    pub fn new(
        source: impl Into<String>,
        line: u32,
        column: u32,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            source: source.into(),
            line: line.max(1),
            column: column.max(1),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.source, self.line, self.column, self.message
        )
    }
}

/// Finds `name` as a whole identifier in `text`, outside string literals, and
/// returns its 1-based (line, column). Used to point at unknown fields, which
/// the parsers report by name only.
pub fn locate_identifier(text: &str, name: &str) -> Option<(u32, u32)> {
    let bytes = text.as_bytes();
    let mut quote: Option<u8> = None;
    let (mut line, mut col) = (1u32, 1u32);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == b'\\' {
                    i += 1;
                    col += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None => {
                if b == b'"' || b == b'\'' {
                    quote = Some(b);
                } else if text[i..].starts_with(name)
                    && (i == 0 || !is_ident_byte(bytes[i - 1]))
                    && bytes.get(i + name.len()).is_none_or(|c| !is_ident_byte(*c))
                {
                    return Some((line, col));
                }
            }
        }
        if b == b'\n' {
            line += 1;
            col = 1;
        } else if (b & 0xC0) != 0x80 {
            col += 1;
        }
        i += 1;
    }
    None
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_identifiers_outside_strings() {
        assert_eq!(
            locate_identifier("a > 1 && country == 'country'", "country"),
            Some((1, 10))
        );
        assert_eq!(locate_identifier("x\n  && y == \"y\"", "y"), Some((2, 6)));
        assert_eq!(locate_identifier("foo.bar", "bar"), None);
        assert_eq!(locate_identifier("'only in string'", "only"), None);
    }
}
