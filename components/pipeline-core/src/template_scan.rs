//! Finds the audience fields a Liquid template reads, with positions.
//!
//! The `liquid` crate checks syntax but exposes no AST, and an unknown
//! variable only fails at render time, per recipient. Marketers need that
//! caught before launch, with a line and column, so this small lexical pass
//! walks `{{ }}` and `{% %}` and reports the root names of variable
//! references: not filter names, properties, keywords or locals.

const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "contains",
    "in",
    "true",
    "false",
    "nil",
    "null",
    "empty",
    "blank",
    "limit",
    "offset",
    "reversed",
    "cols",
    "with",
    "as",
    "forloop",
    "tablerowloop",
    "by",
    "else",
];

/// (name, line, column) of each root variable reference, 1-based.
pub(crate) fn variable_references(template: &str) -> Vec<(String, u32, u32)> {
    let mut found = Vec::new();
    let mut locals: Vec<String> = Vec::new();
    let bytes = template.as_bytes();
    let mut i = 0;
    let mut skip_until: Option<&str> = None;
    while i + 1 < bytes.len() {
        let open = &template[i..i + 2];
        if open != "{{" && open != "{%" {
            i += 1;
            continue;
        }
        let close = if open == "{{" { "}}" } else { "%}" };
        let Some(len) = template[i + 2..].find(close) else {
            break;
        };
        let inner_start = i + 2;
        let inner = &template[inner_start..inner_start + len];
        let tag = open == "{%";
        let words = tokens(inner);
        let first = words.first().map(|t| t.text);
        if let Some(end) = skip_until {
            if tag && first == Some(end) {
                skip_until = None;
            }
        } else if tag && first == Some("raw") {
            skip_until = Some("endraw");
        } else if tag && first == Some("comment") {
            skip_until = Some("endcomment");
        } else {
            collect(template, inner_start, &words, tag, &mut locals, &mut found);
        }
        i = inner_start + len + 2;
    }
    found.retain(|(name, _, _)| !locals.contains(name));
    found
}

struct Token<'a> {
    text: &'a str,
    offset: usize,
    ident: bool,
}

fn tokens(inner: &str) -> Vec<Token<'_>> {
    let b = inner.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' {
            let end = inner[i + 1..]
                .find(c as char)
                .map_or(b.len(), |e| i + 1 + e + 1);
            out.push(Token {
                text: "\"",
                offset: i,
                ident: false,
            });
            i = end;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'-' || b[i] == b'?')
            {
                i += 1;
            }
            out.push(Token {
                text: &inner[start..i],
                offset: start,
                ident: true,
            });
        } else if c.is_ascii_whitespace() || (c == b'-' && (i == 0 || i + 1 == b.len())) {
            i += 1; // whitespace control dashes: {%- -%}
        } else {
            let len = if c.is_ascii() {
                1
            } else {
                inner[i..].chars().next().map_or(1, char::len_utf8)
            };
            out.push(Token {
                text: &inner[i..i + len],
                offset: i,
                ident: false,
            });
            i += len;
        }
    }
    out
}

fn collect(
    template: &str,
    base: usize,
    words: &[Token<'_>],
    tag: bool,
    locals: &mut Vec<String>,
    found: &mut Vec<(String, u32, u32)>,
) {
    let mut start = 0;
    if tag {
        let Some(name) = words.first() else { return };
        start = 1;
        match name.text {
            "assign" | "capture" | "increment" | "decrement" => {
                if let Some(var) = words.get(1) {
                    locals.push(var.text.to_string());
                }
                start = 2;
            }
            "for" | "tablerow" => {
                if let Some(var) = words.get(1) {
                    locals.push(var.text.to_string());
                }
                start = 2;
            }
            "include" | "render" | "cycle" | "break" | "continue" | "endif" | "endfor"
            | "endunless" | "endcase" | "endcapture" | "endtablerow" | "else" => return,
            _ => {}
        }
    }
    for (k, t) in words.iter().enumerate().skip(start) {
        if !t.ident || KEYWORDS.contains(&t.text) {
            continue;
        }
        let prev = k.checked_sub(1).map(|p| words[p].text);
        let next = words.get(k + 1).map(|n| n.text);
        if matches!(prev, Some("|") | Some(".")) || next == Some(":") {
            continue; // a filter name, a property, or a named filter argument
        }
        let (line, col) = line_col(template, base + t.offset);
        found.push((t.text.to_string(), line, col));
    }
}

pub(crate) fn line_col(text: &str, offset: usize) -> (u32, u32) {
    let before = &text[..offset];
    let line = before.matches('\n').count() as u32 + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::variable_references;

    fn names(t: &str) -> Vec<String> {
        variable_references(t)
            .into_iter()
            .map(|(n, _, _)| n)
            .collect()
    }

    #[test]
    fn finds_roots_not_filters_properties_or_locals() {
        assert_eq!(
            names("Hi {{ first_name | default: 'there' }}"),
            vec!["first_name"]
        );
        assert_eq!(names("{{ user.name | upcase }}"), vec!["user"]);
        assert_eq!(names("{% assign x = city %}{{ x }}"), vec!["city"]);
        assert_eq!(
            names("{% for p in purchases limit: 2 %}{{ p }}{% endfor %}"),
            vec!["purchases"]
        );
        assert_eq!(
            names("{% if vip and country == 'DE' %}a{% else %}b{% endif %}"),
            vec!["vip", "country"]
        );
        assert_eq!(
            names("{% raw %}{{ not_a_var }}{% endraw %}{{ ok }}"),
            vec!["ok"]
        );
        assert_eq!(names("{{ amount | times: rate }}"), vec!["amount", "rate"]);
    }

    #[test]
    fn reports_positions() {
        assert_eq!(
            variable_references("a\n  {{ nme }}"),
            vec![("nme".to_string(), 2, 6)]
        );
    }
}
