//! Personalisation with Liquid, the marketing industry's template language
//! (Shopify, Braze, Mailchimp's Mandrill, Salesforce Marketing Cloud).

use liquid::model::{KString, Object, Value as LiquidValue};
use liquid::{Parser, ParserBuilder, Template as Compiled};

use crate::diagnostic::Diagnostic;
use crate::record::{Batch, Value};
use crate::template_scan::variable_references;

#[derive(Debug, Clone)]
pub struct Template {
    /// `segment/variant`.
    pub key: String,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PersonaliserConfig {
    pub campaign: String,
    pub fields: Vec<String>,
    pub templates: Vec<Template>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

struct CompiledTemplate {
    subject: Compiled,
    text: Compiled,
    html: Option<Compiled>,
}

pub struct Personaliser {
    templates: Vec<CompiledTemplate>,
}

impl Personaliser {
    pub fn compile(config: PersonaliserConfig) -> Result<Personaliser, Vec<Diagnostic>> {
        let parser = ParserBuilder::with_stdlib()
            .build()
            .expect("the Liquid standard library builds");
        let mut problems = Vec::new();
        let mut templates = Vec::new();
        for (i, t) in config.templates.iter().enumerate() {
            let mut part = |name: &str, text: &str| {
                compile_part(
                    &parser,
                    &format!("message[{i}].{name}"),
                    text,
                    &config.fields,
                    &mut problems,
                )
            };
            let subject = part("subject", &t.subject);
            let text = part("text", &t.text);
            let html = t.html.as_deref().map(|h| part("html", h));
            if let (Some(subject), Some(text), Some(html)) =
                (subject, text, html.map_or(Some(None), |h| h.map(Some)))
            {
                templates.push(CompiledTemplate {
                    subject,
                    text,
                    html,
                });
            }
        }
        if problems.is_empty() {
            Ok(Personaliser { templates })
        } else {
            Err(problems)
        }
    }

    /// `picks[i]` is the template for `batch.recipients[i]`; each recipient
    /// renders or fails on its own.
    pub fn render(&self, batch: &Batch, picks: &[u32]) -> Vec<Result<Rendered, String>> {
        let keys: Vec<KString> = batch.columns.iter().map(|c| KString::from_ref(c)).collect();
        batch
            .recipients
            .iter()
            .zip(picks)
            .map(|(r, pick)| {
                let t = self
                    .templates
                    .get(*pick as usize)
                    .ok_or_else(|| format!("no template #{pick}"))?;
                let mut globals = Object::new();
                for (key, value) in keys.iter().zip(&r.values) {
                    globals.insert(key.clone(), to_liquid(value.as_ref()));
                }
                let render =
                    |c: &Compiled| c.render(&globals).map_err(|e| one_line(&e.to_string()));
                Ok(Rendered {
                    subject: render(&t.subject)?,
                    text: render(&t.text)?,
                    html: t.html.as_ref().map(render).transpose()?,
                })
            })
            .collect()
    }
}

fn compile_part(
    parser: &Parser,
    source: &str,
    text: &str,
    fields: &[String],
    problems: &mut Vec<Diagnostic>,
) -> Option<Compiled> {
    let before = problems.len();
    for (name, line, column) in variable_references(text) {
        if !fields.contains(&name) {
            problems.push(Diagnostic::new(
                source,
                line,
                column,
                format!(
                    "unknown field `{name}`; the audience has: {}",
                    fields.join(", ")
                ),
            ));
        }
    }
    match parser.parse(text) {
        Ok(t) if problems.len() == before => Some(t),
        Ok(_) => None,
        Err(e) => {
            let (line, column, message) = pest_position(&e.to_string());
            problems.push(Diagnostic::new(
                source,
                line,
                column,
                format!("template error: {message}"),
            ));
            None
        }
    }
}

/// liquid reports syntax errors as pest's text (` --> L:C` and `= message`)
/// with no structured position; read both back out of it.
fn pest_position(msg: &str) -> (u32, u32, String) {
    let pos = msg.split("--> ").nth(1).and_then(|rest| {
        let mut it = rest
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty());
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    });
    let text = msg
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("= "))
        .map_or_else(|| one_line(msg), str::to_string);
    let (line, column) = pos.unwrap_or((1, 1));
    (line, column, text)
}

fn one_line(msg: &str) -> String {
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn to_liquid(value: Option<&Value>) -> LiquidValue {
    match value {
        None => LiquidValue::Nil,
        Some(v @ Value::Number(n)) => match v.as_integer() {
            Some(i) => LiquidValue::scalar(i),
            None => LiquidValue::scalar(*n),
        },
        Some(Value::Text(s)) => LiquidValue::scalar(s.clone()),
        Some(Value::Bool(b)) => LiquidValue::scalar(*b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    fn config(subject: &str, text: &str, html: Option<&str>) -> PersonaliserConfig {
        PersonaliserConfig {
            campaign: "c".into(),
            fields: vec!["first_name".into(), "lifetime_value".into()],
            templates: vec![Template {
                key: "vip/a".into(),
                subject: subject.into(),
                text: text.into(),
                html: html.map(str::to_string),
            }],
        }
    }

    fn batch(values: Vec<Vec<Option<Value>>>) -> Batch {
        Batch {
            campaign: "c".into(),
            columns: vec!["first_name".into(), "lifetime_value".into()],
            recipients: values
                .into_iter()
                .enumerate()
                .map(|(i, values)| Record {
                    line: i as u64,
                    id: i.to_string(),
                    address: format!("{i}@x.test"),
                    values,
                })
                .collect(),
        }
    }

    #[test]
    fn renders_with_defaults_numbers_and_escaping() {
        let p = Personaliser::compile(config(
            "{{ first_name | default: 'there' }}, early access",
            "You spent {{ lifetime_value }}.",
            Some("<p>Hi {{ first_name | escape }}</p>"),
        ))
        .unwrap();
        let out = p.render(
            &batch(vec![
                vec![
                    Some(Value::Text("Ana <3".into())),
                    Some(Value::Number(600.0)),
                ],
                vec![None, Some(Value::Number(12.5))],
            ]),
            &[0, 0],
        );
        let a = out[0].as_ref().unwrap();
        assert_eq!(a.subject, "Ana <3, early access");
        assert_eq!(a.text, "You spent 600.");
        assert_eq!(a.html.as_deref(), Some("<p>Hi Ana &lt;3</p>"));
        let b = out[1].as_ref().unwrap();
        assert_eq!(b.subject, "there, early access");
        assert_eq!(b.text, "You spent 12.5.");
    }

    #[test]
    fn syntax_errors_and_unknown_fields_have_positions() {
        let errs = Personaliser::compile(config(
            "Hi {{ first_name ",
            "line one\n{{ frist_name }}",
            Some("{% if %}"),
        ))
        .err()
        .unwrap();
        let text = errs.iter().find(|d| d.source == "message[0].text").unwrap();
        assert_eq!((text.line, text.column), (2, 4));
        assert!(text.message.contains("unknown field `frist_name`"));
        let subject = errs
            .iter()
            .find(|d| d.source == "message[0].subject")
            .unwrap();
        assert!(subject.message.starts_with("template error"), "{subject:?}");
        assert!(
            errs.iter().any(|d| d.source == "message[0].html"),
            "{errs:?}"
        );
    }

    #[test]
    fn a_failing_recipient_does_not_fail_the_batch() {
        let p = Personaliser::compile(config("{{ lifetime_value | divided_by: 0 }}", "t", None))
            .unwrap();
        let out = p.render(&batch(vec![vec![None, Some(Value::Number(5.0))]]), &[0]);
        assert!(out[0].is_err());
    }
}
