//! Personalisation with Liquid, the marketing industry's template language
//! (Shopify, Braze, Mailchimp's Mandrill, Salesforce Marketing Cloud).

use std::collections::HashMap;
use std::fmt;

use liquid::model::{
    DisplayCow, KString, KStringCow, Object, ObjectView, State, Value as LiquidValue, ValueView,
};
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

/// Every audience field the templates of `config` read, in first-use
/// order: the host sends the default personaliser only these.
pub fn fields_read(config: &PersonaliserConfig) -> Vec<String> {
    let mut read: Vec<String> = Vec::new();
    for t in &config.templates {
        for text in [Some(&t.subject), Some(&t.text), t.html.as_ref()]
            .into_iter()
            .flatten()
        {
            for (name, _, _) in variable_references(text) {
                if config.fields.contains(&name) && !read.contains(&name) {
                    read.push(name);
                }
            }
        }
    }
    read
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
        let columns = Columns::of(&batch.columns);
        batch
            .recipients
            .iter()
            .zip(picks)
            .map(|(r, pick)| {
                let t = self
                    .templates
                    .get(*pick as usize)
                    .ok_or_else(|| format!("no template #{pick}"))?;
                let globals = Fields {
                    columns: &columns,
                    values: r.values.iter().map(|v| to_liquid(v.as_ref())).collect(),
                };
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

/// A batch's field names, looked up once per batch rather than hashed into
/// a map of its own for every recipient.
struct Columns<'a> {
    names: &'a [String],
    index: HashMap<&'a str, usize>,
}

impl<'a> Columns<'a> {
    fn of(names: &'a [String]) -> Columns<'a> {
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        Columns { names, index }
    }
}

/// One recipient's fields as Liquid's globals: their values in column
/// order, found through the batch's `Columns`.
struct Fields<'a> {
    columns: &'a Columns<'a>,
    values: Vec<LiquidValue>,
}

impl Fields<'_> {
    fn object(&self) -> Object {
        self.columns
            .names
            .iter()
            .zip(&self.values)
            .map(|(k, v)| (KString::from_ref(k), v.clone()))
            .collect()
    }
}

impl fmt::Debug for Fields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.object(), f)
    }
}

impl ValueView for Fields<'_> {
    fn as_debug(&self) -> &dyn fmt::Debug {
        self
    }
    fn render(&self) -> DisplayCow<'_> {
        DisplayCow::Owned(Box::new(self.object().render().to_string()))
    }
    fn source(&self) -> DisplayCow<'_> {
        DisplayCow::Owned(Box::new(self.object().source().to_string()))
    }
    fn type_name(&self) -> &'static str {
        "object"
    }
    fn query_state(&self, state: State) -> bool {
        match state {
            State::Truthy => true,
            State::DefaultValue | State::Empty | State::Blank => self.values.is_empty(),
        }
    }
    fn to_kstr(&self) -> KStringCow<'_> {
        KStringCow::from_string(self.object().render().to_string())
    }
    fn to_value(&self) -> LiquidValue {
        LiquidValue::Object(self.object())
    }
    fn as_object(&self) -> Option<&dyn ObjectView> {
        Some(self)
    }
}

impl ObjectView for Fields<'_> {
    fn as_value(&self) -> &dyn ValueView {
        self
    }
    fn size(&self) -> i64 {
        self.values.len() as i64
    }
    fn keys<'k>(&'k self) -> Box<dyn Iterator<Item = KStringCow<'k>> + 'k> {
        Box::new(self.columns.names.iter().map(|n| KStringCow::from_ref(n)))
    }
    fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn ValueView> + 'k> {
        Box::new(self.values.iter().map(|v| v.as_view()))
    }
    fn iter<'k>(&'k self) -> Box<dyn Iterator<Item = (KStringCow<'k>, &'k dyn ValueView)> + 'k> {
        Box::new(
            self.columns
                .names
                .iter()
                .zip(&self.values)
                .map(|(n, v)| (KStringCow::from_ref(n), v.as_view())),
        )
    }
    fn contains_key(&self, index: &str) -> bool {
        self.columns.index.contains_key(index)
    }
    fn get<'s>(&'s self, index: &str) -> Option<&'s dyn ValueView> {
        let i = *self.columns.index.get(index)?;
        self.values.get(i).map(|v| v.as_view())
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
    fn a_batch_of_only_the_fields_read_renders_the_same() {
        let templates = [
            "{{ first_name | default: 'there' }} {% assign v = lifetime_value %}{{ v }}",
            "{% if lifetime_value > 500 %}VIP {{ first_name | upcase }}{% endif %}",
        ];
        let config = PersonaliserConfig {
            campaign: "c".into(),
            fields: vec![
                "country".into(),
                "first_name".into(),
                "lifetime_value".into(),
                "orders".into(),
            ],
            templates: vec![Template {
                key: "vip/a".into(),
                subject: templates[0].into(),
                text: templates[1].into(),
                html: Some("<p>{{ orders }}</p>".into()),
            }],
        };
        let read = fields_read(&config);
        assert_eq!(read, ["first_name", "lifetime_value", "orders"]);
        let full = Batch {
            campaign: "c".into(),
            columns: config.fields.clone(),
            recipients: (0..4)
                .map(|i| Record {
                    line: i,
                    id: i.to_string(),
                    address: format!("{i}@x.test"),
                    values: vec![
                        Some(Value::Text("DE".into())),
                        (i % 2 == 0).then(|| Value::Text(format!("Ann{i}"))),
                        Some(Value::Number(400.0 + 100.0 * i as f64)),
                        Some(Value::Number(i as f64)),
                    ],
                })
                .collect(),
        };
        let p = Personaliser::compile(config).unwrap();
        let picks = [0; 4];
        assert_eq!(
            p.render(&full.project(&read), &picks),
            p.render(&full, &picks)
        );
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
