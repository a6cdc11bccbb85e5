//! Errors in a campaign file, positioned as `file:line:column`.

use std::fmt;
use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileDiagnostic {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl fmt::Display for FileDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Every problem found, reported together so a user fixes them in one pass.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Diagnostics(pub Vec<FileDiagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        write!(
            f,
            "{} problem{} found; nothing was sent",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )
    }
}

/// Maps byte offsets of a TOML document to 1-based lines and columns.
pub struct SourceMap<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl SourceMap<'_> {
    pub fn at_offset(&self, offset: usize, message: impl Into<String>) -> FileDiagnostic {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() as u32 + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
        FileDiagnostic {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
        }
    }

    pub fn at_span(&self, span: &Range<usize>, message: impl Into<String>) -> FileDiagnostic {
        self.at_offset(span.start, message)
    }

    /// Maps (line, column) inside a TOML string value, as a stage reports
    /// them, to the file. Escapes in basic strings may shift the column by
    /// their length; literal strings map exactly.
    pub fn inside_string(
        &self,
        span: &Range<usize>,
        line: u32,
        column: u32,
        message: impl Into<String>,
    ) -> FileDiagnostic {
        let raw = &self.text[span.start.min(self.text.len())..span.end.min(self.text.len())];
        let mut start = span.start;
        if raw.starts_with("\"\"\"") || raw.starts_with("'''") {
            start += 3;
            // TOML drops a newline right after the opening delimiter.
            if self.text[start..].starts_with("\r\n") {
                start += 2;
            } else if self.text[start..].starts_with('\n') {
                start += 1;
            }
        } else if raw.starts_with('"') || raw.starts_with('\'') {
            start += 1;
        }
        let mut offset = start;
        for _ in 1..line.max(1) {
            match self.text[offset..span.end.min(self.text.len())].find('\n') {
                Some(n) => offset += n + 1,
                None => break,
            }
        }
        let rest = &self.text[offset..];
        let skip: usize = rest
            .chars()
            .take(column.saturating_sub(1) as usize)
            .map(char::len_utf8)
            .sum();
        self.at_offset(offset + skip, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_positions_inside_strings() {
        let text = "a = 1\nrule = 'x > 1 && y'\ntext = \"\"\"\nline one\n  {{ bad }}\"\"\"\n";
        let map = SourceMap {
            file: "c.toml",
            text,
        };
        let rule_span = text.find("'x").unwrap()..text.find("y'").unwrap() + 2;
        let d = map.inside_string(&rule_span, 1, 10, "m");
        assert_eq!((d.line, d.column), (2, 18));
        let text_span = text.find("\"\"\"").unwrap()..text.len() - 1;
        let d = map.inside_string(&text_span, 2, 3, "m");
        assert_eq!((d.line, d.column), (5, 3));
        assert_eq!(d.to_string(), "c.toml:5:3: error: m");
    }
}
