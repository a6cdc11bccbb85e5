//! Segmentation: the first segment whose CEL rule holds, then an A/B variant
//! by weight. CEL is the standard for this (Kubernetes, Firebase, Envoy): a
//! marketer's `lifetime_value > 500 && country in ["DE", "FR"]` is valid CEL.

use std::sync::Arc;

use cel::{Context, Program, Value as Cel};

use crate::diagnostic::{Diagnostic, locate_identifier};
use crate::ids::bucket;
use crate::record::{Batch, Value};

#[derive(Debug, Clone)]
pub struct SegmentRule {
    pub name: String,
    pub rule: String,
}

#[derive(Debug, Clone)]
pub struct MessageChoice {
    /// Index into the config's segments.
    pub segment: u32,
    pub variant: String,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct SegmenterConfig {
    pub campaign: String,
    pub fields: Vec<String>,
    pub segments: Vec<SegmentRule>,
    pub messages: Vec<MessageChoice>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    Unsegmented,
    Assigned { segment: u32, message: u32 },
}

struct CompiledSegment {
    name: String,
    program: Program,
    /// (message index, cumulative weight), for a weighted pick.
    choices: Vec<(u32, u64)>,
    total_weight: u64,
}

pub struct Segmenter {
    campaign: String,
    root: Context<'static, 'static>,
    segments: Vec<CompiledSegment>,
    /// Every field any rule reads; only these are bound per recipient.
    referenced: Vec<String>,
}

/// Every audience field the rules of `config` read (once each): the
/// host sends the default segmenter only these. Rules that do not compile
/// read nothing (they are reported by `compile`).
pub fn fields_read(config: &SegmenterConfig) -> Vec<String> {
    let mut read: Vec<String> = Vec::new();
    for seg in &config.segments {
        if let Ok(program) = Program::compile(&seg.rule) {
            for var in program.references().variables() {
                if config.fields.iter().any(|f| f == var) && !read.iter().any(|r| r == var) {
                    read.push(var.to_string());
                }
            }
        }
    }
    read
}

impl Segmenter {
    /// Compiles every rule and checks every reference; all problems at once.
    pub fn compile(config: SegmenterConfig) -> Result<Segmenter, Vec<Diagnostic>> {
        let mut problems = Vec::new();
        let mut segments = Vec::new();
        let mut referenced: Vec<String> = Vec::new();
        for (i, seg) in config.segments.iter().enumerate() {
            let source = format!("segment[{i}].rule");
            if seg.rule.trim().is_empty() {
                problems.push(Diagnostic::new(
                    &source,
                    1,
                    1,
                    "the rule is empty; use `true` to match everyone",
                ));
                continue;
            }
            match Program::compile(&seg.rule) {
                Ok(program) => {
                    for var in program.references().variables() {
                        if !config.fields.iter().any(|f| f == var) {
                            let (line, column) =
                                locate_identifier(&seg.rule, var).unwrap_or((1, 1));
                            problems.push(Diagnostic::new(
                                &source,
                                line,
                                column,
                                format!(
                                    "unknown field `{var}`; the audience has: {}",
                                    config.fields.join(", ")
                                ),
                            ));
                        } else if !referenced.iter().any(|r| r == var) {
                            referenced.push(var.to_string());
                        }
                    }
                    segments.push(CompiledSegment {
                        name: seg.name.clone(),
                        program,
                        choices: Vec::new(),
                        total_weight: 0,
                    });
                }
                Err(errors) => {
                    for e in errors.errors {
                        // cel-parser reports a 1-based line and a 0-based column.
                        let line = u32::try_from(e.pos.0).unwrap_or(1);
                        let column = u32::try_from(e.pos.1 + 1).unwrap_or(1);
                        problems.push(Diagnostic::new(
                            &source,
                            line,
                            column,
                            // cel-parser's own text may already say so.
                            format!(
                                "syntax error: {}",
                                e.msg.strip_prefix("Syntax error: ").unwrap_or(&e.msg)
                            ),
                        ));
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        for (m, choice) in config.messages.iter().enumerate() {
            let Some(seg) = segments.get_mut(choice.segment as usize) else {
                problems.push(Diagnostic::new(
                    format!("message[{m}].segment"),
                    1,
                    1,
                    "refers to no segment",
                ));
                continue;
            };
            if choice.weight == 0 {
                continue; // a paused variant: kept in the campaign, never picked
            }
            seg.total_weight += u64::from(choice.weight);
            seg.choices.push((m as u32, seg.total_weight));
        }
        for (i, seg) in segments.iter().enumerate() {
            if seg.total_weight == 0 {
                problems.push(Diagnostic::new(
                    format!("segment[{i}]"),
                    1,
                    1,
                    format!(
                        "segment `{}` has no message with a weight above 0",
                        seg.name
                    ),
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Segmenter {
            campaign: config.campaign,
            root: Context::default(),
            segments,
            referenced,
        })
    }

    /// One assignment per recipient. A rule that cannot be evaluated for a
    /// recipient (a missing field, a type mismatch) does not hold for them.
    pub fn assign(&self, batch: &Batch) -> Vec<Assignment> {
        let columns: Vec<(&str, Option<usize>)> = self
            .referenced
            .iter()
            .map(|name| (name.as_str(), batch.columns.iter().position(|c| c == name)))
            .collect();
        batch
            .recipients
            .iter()
            .map(|r| {
                let mut scope = self.root.new_inner_scope();
                for (name, index) in &columns {
                    let value = index.and_then(|i| r.values.get(i)).and_then(Option::as_ref);
                    scope.add_variable_from_value(*name, to_cel(value));
                }
                for (s, seg) in self.segments.iter().enumerate() {
                    if matches!(seg.program.execute(&scope), Ok(Cel::Bool(true))) {
                        let point = bucket(&self.campaign, &seg.name, &r.id, seg.total_weight);
                        let message = seg
                            .choices
                            .iter()
                            .find(|(_, cum)| point < *cum)
                            .map_or(0, |(m, _)| *m);
                        return Assignment::Assigned {
                            segment: s as u32,
                            message,
                        };
                    }
                }
                Assignment::Unsegmented
            })
            .collect()
    }
}

fn to_cel(value: Option<&Value>) -> Cel {
    match value {
        None => Cel::Null,
        Some(v @ Value::Number(n)) => v.as_integer().map_or(Cel::Float(*n), Cel::Int),
        Some(Value::Text(s)) => Cel::String(Arc::new(s.clone())),
        Some(Value::Bool(b)) => Cel::Bool(*b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    fn config(rules: &[(&str, &str)], messages: &[(u32, &str, u32)]) -> SegmenterConfig {
        SegmenterConfig {
            campaign: "c".into(),
            fields: vec![
                "country".into(),
                "lifetime_value".into(),
                "subscribed".into(),
            ],
            segments: rules
                .iter()
                .map(|(n, r)| SegmentRule {
                    name: n.to_string(),
                    rule: r.to_string(),
                })
                .collect(),
            messages: messages
                .iter()
                .map(|(s, v, w)| MessageChoice {
                    segment: *s,
                    variant: v.to_string(),
                    weight: *w,
                })
                .collect(),
        }
    }

    type Row<'a> = (&'a str, Option<Value>, Option<Value>, Option<Value>);

    fn batch(rows: &[Row<'_>]) -> Batch {
        Batch {
            campaign: "c".into(),
            columns: vec![
                "country".into(),
                "lifetime_value".into(),
                "subscribed".into(),
            ],
            recipients: rows
                .iter()
                .map(|(id, a, b, c)| Record {
                    line: 0,
                    id: id.to_string(),
                    address: format!("{id}@example.com"),
                    values: vec![a.clone(), b.clone(), c.clone()],
                })
                .collect(),
        }
    }

    fn text(s: &str) -> Option<Value> {
        Some(Value::Text(s.into()))
    }

    #[test]
    fn a_batch_of_only_the_fields_read_is_segmented_the_same() {
        let config = config(
            &[
                ("vip", r#"lifetime_value > 500 && country in ["DE", "FR"]"#),
                ("rest", "subscribed == true || bogus("),
                ("all", "true"),
            ],
            &[(0, "a", 1), (0, "b", 1), (2, "a", 1)],
        );
        let read = fields_read(&config);
        let mut sorted = read.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            ["country", "lifetime_value"],
            "a broken rule reads nothing"
        );
        let full = batch(&[
            ("1", text("DE"), Some(Value::Number(600.5)), None),
            (
                "2",
                text("DE"),
                Some(Value::Number(100.0)),
                Some(Value::Bool(true)),
            ),
            ("3", text("FR"), Some(Value::Number(900.0)), None),
        ]);
        let mut ok = config.clone();
        ok.segments.remove(1);
        ok.messages[2].segment = 1;
        let seg = Segmenter::compile(ok).unwrap();
        assert_eq!(seg.assign(&full.project(&read)), seg.assign(&full));
    }

    #[test]
    fn first_matching_segment_wins_and_numbers_compare_as_numbers() {
        let seg = Segmenter::compile(config(
            &[
                ("vip", r#"lifetime_value > 500 && country in ["DE", "FR"]"#),
                ("rest", "true"),
            ],
            &[(0, "a", 1), (1, "a", 1)],
        ))
        .unwrap();
        let out = seg.assign(&batch(&[
            ("1", text("DE"), Some(Value::Number(600.5)), None),
            ("2", text("DE"), Some(Value::Number(100.0)), None),
            ("3", text("US"), Some(Value::Number(900.0)), None),
            ("4", text("FR"), None, None),
        ]));
        assert_eq!(
            out[0],
            Assignment::Assigned {
                segment: 0,
                message: 0
            }
        );
        assert_eq!(
            out[1],
            Assignment::Assigned {
                segment: 1,
                message: 1
            }
        );
        assert_eq!(
            out[2],
            Assignment::Assigned {
                segment: 1,
                message: 1
            }
        );
        // A missing field makes the rule false, not the batch fail.
        assert_eq!(
            out[3],
            Assignment::Assigned {
                segment: 1,
                message: 1
            }
        );
    }

    #[test]
    fn unmatched_recipients_are_unsegmented() {
        let seg =
            Segmenter::compile(config(&[("subs", "subscribed == true")], &[(0, "a", 1)])).unwrap();
        let out = seg.assign(&batch(&[
            ("1", None, None, Some(Value::Bool(true))),
            ("2", None, None, Some(Value::Bool(false))),
        ]));
        assert_eq!(
            out,
            vec![
                Assignment::Assigned {
                    segment: 0,
                    message: 0
                },
                Assignment::Unsegmented
            ]
        );
    }

    #[test]
    fn variants_split_by_weight_deterministically() {
        let seg =
            Segmenter::compile(config(&[("all", "true")], &[(0, "a", 3), (0, "b", 1)])).unwrap();
        let rows: Vec<_> = (0..4000)
            .map(|i| (format!("r{i}"), None, None, None))
            .collect();
        let rows: Vec<_> = rows
            .iter()
            .map(|(id, a, b, c)| (id.as_str(), a.clone(), b.clone(), c.clone()))
            .collect();
        let first = seg.assign(&batch(&rows));
        let b = first
            .iter()
            .filter(|a| {
                **a == Assignment::Assigned {
                    segment: 0,
                    message: 1,
                }
            })
            .count();
        assert!(
            (850..1150).contains(&b),
            "variant b got {b} of 4000 at weight 1/4"
        );
        assert_eq!(first, seg.assign(&batch(&rows)));
    }

    #[test]
    fn reports_syntax_errors_and_unknown_fields_with_positions() {
        let errs = Segmenter::compile(config(
            &[
                ("a", "country == 'DE' &&"),
                ("b", "lifetime_value > 1 &&\n  contry == 'DE'"),
            ],
            &[(0, "a", 1), (1, "a", 1)],
        ))
        .err()
        .unwrap();
        assert!(
            errs.iter().any(|d| d.source == "segment[0].rule"
                && d.message.starts_with("syntax error")
                && !d.message.to_lowercase()["syntax error".len()..].contains("syntax error")),
            "{errs:?}"
        );
        let unknown = errs.iter().find(|d| d.source == "segment[1].rule").unwrap();
        assert_eq!((unknown.line, unknown.column), (2, 3));
        assert!(unknown.message.contains("unknown field `contry`"));
    }

    #[test]
    fn malformed_rules_are_errors_not_crashes() {
        for rule in [
            "(",
            "country &&",
            "1 +",
            "[1,",
            "country.",
            "'open",
            "country ? 1",
            "in",
            "@#",
            "))",
            "a b c",
        ] {
            let result = Segmenter::compile(config(&[("s", rule)], &[(0, "a", 1)]));
            assert!(result.is_err(), "`{rule}` should not compile");
        }
    }

    #[test]
    fn a_segment_without_messages_is_an_error() {
        let errs = Segmenter::compile(config(&[("a", "true"), ("b", "true")], &[(0, "a", 1)]))
            .err()
            .unwrap();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("segment `b` has no message"));
    }
}
