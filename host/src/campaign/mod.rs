//! A campaign: its file, checked. `Campaign::load` does every check that
//! needs nothing but the file and its audience's header, and reports every
//! problem at once with `file:line:column`. Rules and templates are then
//! checked by the stages themselves (see `pipeline::prepare`), mapped back
//! through `Campaign::locate`.

mod bundle;
mod diagnostics;
mod model;

use std::ops::Range;
use std::path::{Path, PathBuf};

pub use bundle::{Bundle, BundleError};
pub use diagnostics::{Diagnostics, FileDiagnostic, SourceMap};
pub use model::*;

use crate::audience::{AudienceReader, AudienceSpec, Format, PostgresSource, postgres_columns};
use crate::runtime::{ComponentSource, defaults};

/// Where accepted messages go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TransportSpec {
    /// One JSON line per message in `<data-dir>/outbox.jsonl`.
    Outbox,
    /// Real SMTP, pooled.
    Smtp { host: String, port: u16 },
    /// Discard (benchmarks).
    Null,
    /// `squall.toml` providers by name, in order of preference.
    Providers(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct StageSources {
    pub segmenter: ComponentSource,
    pub personaliser: ComponentSource,
    pub sender: ComponentSource,
}

#[derive(Debug)]
pub struct Campaign {
    pub path: PathBuf,
    pub text: String,
    pub file: CampaignFile,
    pub audience: AudienceSpec,
    /// The audience's fields, as its header (or declaration) names them.
    pub columns: Vec<String>,
    pub transport: TransportSpec,
    pub stages: StageSources,
    /// Fingerprint of the campaign file, stored with the campaign's state.
    pub hash: String,
    /// When messages may go.
    pub timing: crate::schedule::Timing,
    /// The audience field with each recipient's time zone, when timing
    /// depends on it and the audience has it.
    pub timezone_field: Option<String>,
}

impl Campaign {
    pub fn id(&self) -> &str {
        self.file.campaign.id.get_ref()
    }

    pub fn channel(&self) -> Channel {
        self.file.campaign.channel
    }

    /// `segment/variant` of message `i`: its key in the delivery ledger.
    pub fn message_key(&self, i: usize) -> String {
        let m = &self.file.message[i];
        format!("{}/{}", m.segment.get_ref(), m.variant.get_ref())
    }

    /// Loads and checks a campaign; any problem is an error.
    pub fn load(path: &Path) -> Result<Campaign, Diagnostics> {
        match Campaign::load_partial(path)? {
            (campaign, problems) if problems.is_empty() => Ok(campaign),
            (_, problems) => Err(Diagnostics(problems)),
        }
    }

    /// Loads a campaign whose problems leave it usable enough for its rules
    /// and templates to be checked too (wrong references, missing messages),
    /// so `squall validate` reports everything in one pass. An `Err` is a
    /// problem that stops even that (unreadable file, bad TOML, no audience).
    pub fn load_partial(path: &Path) -> Result<(Campaign, Vec<FileDiagnostic>), Diagnostics> {
        Campaign::parse(path, None)
    }

    /// Loads a campaign unpacked from a stored bundle: the audience is not
    /// here (it was streamed into the queue at launch), its fields are given.
    pub fn load_stored(path: &Path, columns: Vec<String>) -> Result<Campaign, Diagnostics> {
        match Campaign::parse(path, Some(columns))? {
            (campaign, problems) if problems.is_empty() => Ok(campaign),
            (_, problems) => Err(Diagnostics(problems)),
        }
    }

    fn parse(
        path: &Path,
        known_columns: Option<Vec<String>>,
    ) -> Result<(Campaign, Vec<FileDiagnostic>), Diagnostics> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostics(vec![FileDiagnostic {
                file: display.clone(),
                line: 1,
                column: 1,
                message: format!("cannot read the campaign file: {e}"),
            }])
        })?;
        let map = SourceMap {
            file: &display,
            text: &text,
        };
        let file: CampaignFile = toml::from_str(&text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            Diagnostics(vec![map.at_span(&span, e.message().trim().to_string())])
        })?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut problems = Vec::new();
        let Some((audience, columns, transport, stages)) =
            check(&file, &dir, &map, known_columns, &mut problems)
        else {
            return Err(Diagnostics(problems));
        };
        let hash = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()));
        let (timing, timezone_field) = check_schedule(&file, &map, &columns, &mut problems);
        if let Some(f) = &file.audience.consent_field
            && !columns.contains(f.get_ref())
        {
            problems.push(map.at_span(
                &f.span(),
                format!(
                    "audience.consent_field `{}` is not a field of the audience ({})",
                    f.get_ref(),
                    columns.join(", ")
                ),
            ));
        }
        let campaign = Campaign {
            timing,
            timezone_field,
            path: path.to_path_buf(),
            text,
            file,
            audience,
            columns,
            transport,
            stages,
            hash,
        };
        Ok((campaign, problems))
    }

    /// Positions a problem a stage reported (`segment[1].rule` 2:5) in the file.
    pub fn locate(&self, source: &str, line: u32, column: u32, message: &str) -> FileDiagnostic {
        let display = self.path.display().to_string();
        let map = SourceMap {
            file: &display,
            text: &self.text,
        };
        let (head, field) = source.split_once('.').unwrap_or((source, ""));
        let index = |prefix: &str| {
            head.strip_prefix(prefix)?
                .strip_suffix(']')?
                .parse::<usize>()
                .ok()
        };
        let string_span: Option<Range<usize>> = if let Some(i) = index("segment[") {
            self.file.segment.get(i).map(|s| {
                if field == "rule" {
                    s.rule.span()
                } else {
                    s.name.span()
                }
            })
        } else if let Some(i) = index("message[") {
            self.file.message.get(i).and_then(|m| match field {
                "subject" => m.subject.as_ref().map(|s| s.span()),
                "text" => Some(m.text.span()),
                "html" => m.html.as_ref().map(|s| s.span()),
                _ => Some(m.segment.span()),
            })
        } else if source == "delivery.from" {
            Some(self.file.delivery.from.span())
        } else if source == "delivery.providers" {
            self.file.delivery.providers.as_ref().map(|p| p.span())
        } else {
            None
        };
        let inside = matches!(field, "rule" | "subject" | "text" | "html");
        match string_span {
            Some(span) if inside => {
                map.inside_string(&span, line, column, format!("{source}: {message}"))
            }
            Some(span) => map.at_span(&span, format!("{source}: {message}")),
            None => map.at_offset(0, format!("{source}: {message}")),
        }
    }
}

type Checked = (AudienceSpec, Vec<String>, TransportSpec, StageSources);

/// `[schedule]`, checked: a bad time, zone or field is reported at its place.
fn check_schedule(
    file: &CampaignFile,
    map: &SourceMap<'_>,
    columns: &[String],
    problems: &mut Vec<FileDiagnostic>,
) -> (crate::schedule::Timing, Option<String>) {
    use crate::schedule::{Span, Timing};
    let s = &file.schedule;
    let mut timing = Timing::default();
    if let Some(start) = &s.start {
        match crate::schedule::clock::parse_rfc3339_ms(start.get_ref()) {
            Some(ms) => timing.start_ms = Some(ms),
            None => problems.push(map.at_span(
                &start.span(),
                format!(
                    "schedule.start `{}` is not a time like 2027-03-01T09:00:00Z",
                    start.get_ref()
                ),
            )),
        }
    }
    let mut hours = |h: &Option<toml::Spanned<HoursSection>>, name: &str| {
        h.as_ref()
            .and_then(|h| match Span::parse(&h.get_ref().from, &h.get_ref().to) {
                Ok(span) => Some(span),
                Err(e) => {
                    problems.push(map.at_span(&h.span(), format!("schedule.{name}: {e}")));
                    None
                }
            })
    };
    timing.window = hours(&s.window, "window");
    timing.quiet = hours(&s.quiet_hours, "quiet_hours");
    if let Some(zone) = &s.timezone {
        match zone.get_ref().parse::<chrono_tz::Tz>() {
            Ok(tz) => timing.default_zone = Some(tz),
            Err(_) => problems.push(map.at_span(
                &zone.span(),
                format!(
                    "schedule.timezone `{}` is not an IANA time zone like Europe/Berlin",
                    zone.get_ref()
                ),
            )),
        }
    }
    if let Some(w) = &s.waves {
        let shares = w.get_ref();
        let ok = !shares.is_empty()
            && shares.windows(2).all(|p| p[0] < p[1])
            && shares.iter().all(|x| *x > 0.0 && *x <= 1.0)
            && shares.last() == Some(&1.0);
        if !ok {
            problems.push(map.at_span(
                &w.span(),
                "schedule.waves must be increasing shares in (0, 1] ending with 1.0, like [0.01, 0.05, 0.25, 1.0]",
            ));
        }
        let pause_ms = match &s.wave_pause {
            Some(p) => match humantime::parse_duration(p.get_ref()) {
                Ok(d) => d.as_millis() as i64,
                Err(e) => {
                    problems.push(map.at_span(
                        &p.span(),
                        format!(
                            "schedule.wave_pause `{}`: {e} (write e.g. \"30m\")",
                            p.get_ref()
                        ),
                    ));
                    0
                }
            },
            None => 0,
        };
        if ok {
            timing.waves = Some(crate::schedule::waves::WavePlan {
                shares: shares.clone(),
                pause_ms,
            });
        }
    }
    let g = &file.guardrails;
    timing.guardrails = crate::schedule::Guardrails {
        max_bounce_rate: g.max_bounce_rate,
        max_failure_rate: g.max_failure_rate,
        max_complaint_rate: g.max_complaint_rate,
        max_unsubscribe_rate: g.max_unsubscribe_rate,
        min_sample: g.min_sample.unwrap_or(50),
        window_ms: g
            .window
            .as_deref()
            .and_then(|w| humantime::parse_duration(w).ok())
            .map_or(3_600_000, |d| d.as_millis() as i64),
    };
    if g.window
        .as_deref()
        .is_some_and(|w| humantime::parse_duration(w).is_err())
    {
        problems.push(map.at_offset(0, "guardrails.window is not a duration like \"1h\""));
    }
    if let Some(ab) = &file.ab {
        let a = ab.get_ref();
        let decide = humantime::parse_duration(&a.decide_after);
        if !(a.test_share > 0.0 && a.test_share < 1.0) {
            problems.push(map.at_span(
                &ab.span(),
                "ab.test_share must be between 0 and 1, like 0.2",
            ));
        }
        if let Err(e) = &decide {
            problems.push(map.at_span(
                &ab.span(),
                format!(
                    "ab.decide_after `{}`: {e} (write e.g. \"4h\")",
                    a.decide_after
                ),
            ));
        }
        if let Some(f) = &a.fallback {
            for seg in &file.segment {
                let variants: Vec<&String> = file
                    .message
                    .iter()
                    .filter(|m| m.segment.get_ref() == seg.name.get_ref())
                    .map(|m| m.variant.get_ref())
                    .collect();
                if variants.len() > 1 && !variants.contains(&f) {
                    problems.push(map.at_span(
                        &ab.span(),
                        format!(
                            "ab.fallback `{f}` is not a variant of segment `{}`",
                            seg.name.get_ref()
                        ),
                    ));
                }
            }
        }
        if let Ok(d) = decide {
            timing.ab = Some(crate::schedule::ab::AbPlan {
                test_share: a.test_share,
                metric: a.metric,
                decide_after_ms: d.as_millis() as i64,
                min_sample: a.min_sample,
                fallback: a.fallback.clone(),
            });
        }
    }
    let local = s.window.is_some() || s.quiet_hours.is_some();
    let field = match &s.timezone_field {
        Some(f) if local && !columns.contains(f.get_ref()) => {
            problems.push(map.at_span(
                &f.span(),
                format!(
                    "schedule.timezone_field `{}` is not a field of the audience ({})",
                    f.get_ref(),
                    columns.join(", ")
                ),
            ));
            None
        }
        Some(f) => Some(f.get_ref().clone()),
        None => columns.iter().find(|c| *c == "timezone").cloned(),
    };
    (timing, if local { field } else { None })
}

fn check(
    file: &CampaignFile,
    dir: &Path,
    map: &SourceMap<'_>,
    known_columns: Option<Vec<String>>,
    problems: &mut Vec<FileDiagnostic>,
) -> Option<Checked> {
    let c = &file.campaign;
    let id = c.id.get_ref();
    if id.is_empty()
        || !id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
    {
        problems.push(map.at_span(
            &c.id.span(),
            "campaign id must be non-empty letters, digits, `-`, `_` or `.`",
        ));
    }

    // Segments and messages refer to each other by name.
    for (i, s) in file.segment.iter().enumerate() {
        let name = s.name.get_ref();
        if name.is_empty() || name.contains('/') {
            problems.push(map.at_span(
                &s.name.span(),
                "segment name must be non-empty and contain no `/`",
            ));
        }
        if file.segment[..i].iter().any(|o| o.name.get_ref() == name) {
            problems
                .push(map.at_span(&s.name.span(), format!("segment `{name}` is defined twice")));
        }
        if !file.message.iter().any(|m| m.segment.get_ref() == name) {
            problems.push(map.at_span(
                &s.name.span(),
                format!("segment `{name}` has no [[message]]"),
            ));
        }
    }
    if file.segment.is_empty() {
        problems.push(map.at_offset(
            0,
            "the campaign has no [[segment]]; add one (rule = \"true\" matches everyone)",
        ));
    }
    let names: Vec<&str> = file
        .segment
        .iter()
        .map(|s| s.name.get_ref().as_str())
        .collect();
    for (i, m) in file.message.iter().enumerate() {
        let seg = m.segment.get_ref();
        if !names.contains(&seg.as_str()) {
            problems.push(map.at_span(
                &m.segment.span(),
                format!(
                    "message refers to unknown segment `{seg}`; segments are: {}",
                    names.join(", ")
                ),
            ));
        }
        let variant = m.variant.get_ref();
        if variant.is_empty() || variant.contains('/') {
            problems.push(map.at_span(
                &m.segment.span(),
                "variant must be non-empty and contain no `/`",
            ));
        }
        if file.message[..i]
            .iter()
            .any(|o| o.segment.get_ref() == seg && o.variant.get_ref() == variant)
        {
            problems.push(map.at_span(
                &m.segment.span(),
                format!("message `{seg}/{variant}` is defined twice"),
            ));
        }
        if c.channel == Channel::Email && m.subject.is_none() {
            problems.push(map.at_span(&m.segment.span(), "an email message needs a `subject`"));
        }
    }

    // Delivery.
    let d = &file.delivery;
    let explicit_transport = d.transport.span() != (0..0);
    let transport = match &d.providers {
        Some(p) if explicit_transport => {
            problems
                .push(map.at_span(&p.span(), "set either `transport` or `providers`, not both"));
            None
        }
        Some(p) if p.get_ref().is_empty() => {
            problems.push(map.at_span(&p.span(), "`providers` names at least one provider"));
            None
        }
        Some(p) => Some(TransportSpec::Providers(p.get_ref().clone())),
        None => transport_spec(d, map, problems),
    };
    if c.channel == Channel::Email
        && d.from
            .get_ref()
            .parse::<lettre::message::Mailbox>()
            .is_err()
    {
        problems.push(map.at_span(
            &d.from.span(),
            format!(
                "`{}` is not a sender address like `Shop <news@example.com>`",
                d.from.get_ref()
            ),
        ));
    }
    if c.channel != Channel::Email && matches!(transport, Some(TransportSpec::Smtp { .. })) {
        problems.push(map.at_span(&d.transport.span(), "the smtp transport carries email only"));
    }
    if d.connections == 0 {
        problems.push(map.at_span(
            &d.transport.span(),
            "delivery.connections must be at least 1",
        ));
    }

    // Limits.
    let l = &file.limits;
    if !(1..=10_000).contains(&l.batch_size) {
        problems.push(map.at_offset(0, "limits.batch_size must be between 1 and 10000"));
    }
    if l.max_attempts == 0 {
        problems.push(map.at_offset(0, "limits.max_attempts must be at least 1"));
    }

    // Custom stages.
    let stage = |source: &Option<toml::Spanned<String>>,
                 name: &'static str,
                 bytes: &'static [u8],
                 problems: &mut Vec<FileDiagnostic>| {
        match source {
            None => Some(ComponentSource::Embedded { name, bytes }),
            Some(p) => {
                let path = dir.join(p.get_ref());
                if path.is_file() {
                    Some(ComponentSource::File(path))
                } else {
                    problems.push(map.at_span(
                        &p.span(),
                        format!("plugin {} does not exist", path.display()),
                    ));
                    None
                }
            }
        }
    };
    let segmenter = stage(
        &file.stages.segmenter,
        "segmenter",
        defaults::SEGMENTER,
        problems,
    );
    let personaliser = stage(
        &file.stages.personaliser,
        "personaliser",
        defaults::PERSONALISER,
        problems,
    );
    // `[delivery] plugin` names the sender where it is configured.
    let sender_source = match (&d.plugin, &file.stages.sender) {
        (Some(p), Some(_)) => {
            problems.push(map.at_span(
                &p.span(),
                "set the sender plugin once: either `[delivery] plugin` or `[stages] sender`",
            ));
            None
        }
        (Some(p), None) => Some(p.clone()),
        (None, s) => s.clone(),
    };
    let sender = stage(&sender_source, "sender", defaults::SENDER, problems);

    // Audience: its header must carry the id and address fields.
    let a = &file.audience;
    let is_postgres = a.source.get_ref() == "postgres";
    let path = if is_postgres {
        PathBuf::from("postgres")
    } else {
        dir.join(a.source.get_ref())
    };
    let address_field = a
        .address_field
        .as_ref()
        .map(|f| f.get_ref().clone())
        .unwrap_or_else(|| {
            match c.channel {
                Channel::Email => "email",
                Channel::Sms => "phone",
                Channel::Webhook => a.id_field.get_ref(),
            }
            .to_string()
        });
    let postgres = postgres_source(a, is_postgres, map, problems);
    let spec = AudienceSpec {
        format: a.format.unwrap_or_else(|| Format::from_path(&path)),
        path,
        postgres: postgres.clone(),
        columns: None,
        id_field: a.id_field.get_ref().clone(),
        address_field,
        declared: a
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), *v.get_ref()))
            .collect(),
        channel: c.channel,
    };
    let columns = if is_postgres {
        // Validating never reaches the database: a PostgreSQL audience's
        // fields are the declared ones (the run checks the query has them).
        postgres.as_ref()?;
        Some(known_columns.unwrap_or_else(|| postgres_columns(&spec)))
    } else {
        match known_columns.map_or_else(
            || AudienceReader::open(&spec).map(|r| r.columns().to_vec()),
            Ok,
        ) {
            Ok(columns) => {
                for (name, ty) in &a.fields {
                    if !columns.contains(name) {
                        problems.push(map.at_span(
                            &ty.span(),
                            format!("declared field `{name}` is not in the audience"),
                        ));
                    }
                }
                Some(columns)
            }
            Err(e) => {
                problems.push(map.at_span(&a.source.span(), e.to_string()));
                None
            }
        }
    };
    Some((
        spec,
        columns?,
        transport?,
        StageSources {
            segmenter: segmenter?,
            personaliser: personaliser?,
            sender: sender?,
        },
    ))
}

/// `query` and `url_env` of a `source = "postgres"` audience, and neither
/// for a file.
fn postgres_source(
    a: &AudienceSection,
    is_postgres: bool,
    map: &SourceMap<'_>,
    problems: &mut Vec<FileDiagnostic>,
) -> Option<PostgresSource> {
    if !is_postgres {
        for (set, name) in [(&a.query, "query"), (&a.url_env, "url_env")] {
            if let Some(v) = set {
                problems.push(map.at_span(
                    &v.span(),
                    format!("`{name}` is for `source = \"postgres\"`; this audience is a file"),
                ));
            }
        }
        return None;
    }
    let mut missing = false;
    for (set, name, example) in [
        (
            &a.query,
            "query",
            "query = \"SELECT id, email, first_name FROM customers\"",
        ),
        (&a.url_env, "url_env", "url_env = \"AUDIENCE_DATABASE_URL\""),
    ] {
        if set.as_ref().is_none_or(|v| v.get_ref().trim().is_empty()) {
            problems.push(map.at_span(
                &a.source.span(),
                format!("a PostgreSQL audience needs `{name}`, e.g. {example}"),
            ));
            missing = true;
        }
    }
    if a.fields.is_empty() {
        problems.push(map.at_span(
            &a.source.span(),
            "a PostgreSQL audience declares its fields in [audience.fields] (name = \"string\" | \"number\" | \"boolean\"), so that it can be checked without the database",
        ));
    }
    if missing {
        return None;
    }
    Some(PostgresSource {
        query: a.query.as_ref()?.get_ref().clone(),
        url_env: a.url_env.as_ref()?.get_ref().clone(),
    })
}

/// A campaign's own `transport` setting.
fn transport_spec(
    d: &DeliverySection,
    map: &SourceMap<'_>,
    problems: &mut Vec<FileDiagnostic>,
) -> Option<TransportSpec> {
    match d.transport.get_ref().as_str() {
        "outbox" => Some(TransportSpec::Outbox),
        "null" => Some(TransportSpec::Null),
        other => {
            match other
                .strip_prefix("smtp://")
                .and_then(|hp| hp.rsplit_once(':'))
            {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Some(TransportSpec::Smtp {
                        host: host.to_string(),
                        port: port.parse().unwrap(),
                    })
                }
                _ => {
                    problems.push(map.at_span(
                    &d.transport.span(),
                    format!("unknown transport `{other}`; use `outbox`, `null` or `smtp://host:port`"),
                ));
                    None
                }
            }
        }
    }
}
