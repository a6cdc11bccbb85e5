//! When a message may go: not before the campaign's start, inside the
//! recipient's local send window, never in quiet hours. A pure function of
//! (now, time zone, settings), so every worker agrees and tests can ask
//! about any instant.

pub mod ab;
pub mod clock;
pub mod waves;

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// A daily span of local time; `to` before `from` wraps past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub from: NaiveTime,
    pub to: NaiveTime,
}

impl Span {
    pub fn parse(from: &str, to: &str) -> Result<Span, String> {
        let t = |s: &str| {
            NaiveTime::parse_from_str(s, "%H:%M")
                .map_err(|_| format!("`{s}` is not a time of day like 09:30"))
        };
        let span = Span {
            from: t(from)?,
            to: t(to)?,
        };
        if span.from == span.to {
            return Err(format!("`{from}` to `{to}` is an empty span"));
        }
        Ok(span)
    }

    pub fn contains(&self, t: NaiveTime) -> bool {
        if self.from < self.to {
            self.from <= t && t < self.to
        } else {
            t >= self.from || t < self.to
        }
    }
}

/// A campaign's timing, validated.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    /// Nothing goes before this (Unix ms).
    pub start_ms: Option<i64>,
    /// Recipient-local hours when messages may go.
    pub window: Option<Span>,
    /// Recipient-local hours when nothing goes, window or not.
    pub quiet: Option<Span>,
    /// For recipients without a valid zone of their own.
    pub default_zone: Option<Tz>,
    /// Waves, when the campaign goes out in them.
    pub waves: Option<waves::WavePlan>,
    pub guardrails: Guardrails,
    /// A/B winner selection.
    pub ab: Option<ab::AbPlan>,
}

/// Rates that pause a campaign (see `campaign::GuardrailsSection`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Guardrails {
    pub max_bounce_rate: Option<f64>,
    pub max_failure_rate: Option<f64>,
    pub max_complaint_rate: Option<f64>,
    pub max_unsubscribe_rate: Option<f64>,
    pub min_sample: u64,
    pub window_ms: i64,
}

/// What happened to a campaign's messages over some span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    pub delivered: u64,
    pub failed: u64,
    pub bounces: u64,
    pub complaints: u64,
    pub unsubscribes: u64,
}

impl Guardrails {
    pub fn any(&self) -> bool {
        self.max_bounce_rate.is_some()
            || self.max_failure_rate.is_some()
            || self.max_complaint_rate.is_some()
            || self.max_unsubscribe_rate.is_some()
    }

    /// The first limit `o` crosses, said for people; `None` below
    /// `min_sample` messages.
    pub fn breach(&self, o: &Outcomes) -> Option<String> {
        let attempted = o.delivered + o.failed;
        if attempted < self.min_sample.max(1) {
            return None;
        }
        let of = |n: u64, base: u64| n as f64 / base.max(1) as f64;
        [
            (
                "failure rate",
                self.max_failure_rate,
                of(o.failed, attempted),
            ),
            (
                "bounce rate",
                self.max_bounce_rate,
                of(o.bounces, o.delivered),
            ),
            (
                "complaint rate",
                self.max_complaint_rate,
                of(o.complaints, o.delivered),
            ),
            (
                "unsubscribe rate",
                self.max_unsubscribe_rate,
                of(o.unsubscribes, o.delivered),
            ),
        ]
        .into_iter()
        .find_map(|(name, max, rate)| {
            max.filter(|m| rate > *m).map(|m| {
                format!(
                    "guardrail: {name} {:.1}% > {:.1}% over {attempted} messages",
                    rate * 100.0,
                    m * 100.0
                )
            })
        })
    }
}

impl Timing {
    pub fn is_immediate(&self) -> bool {
        self.start_ms.is_none() && self.window.is_none() && self.quiet.is_none()
    }

    /// Whether the send stage must look at waves or guardrails.
    pub fn is_gated(&self) -> bool {
        self.waves.is_some() || self.guardrails.any()
    }

    fn allowed(&self, t: NaiveTime) -> bool {
        self.window.is_none_or(|w| w.contains(t)) && !self.quiet.is_some_and(|q| q.contains(t))
    }

    /// The earliest instant at or after `now_ms` when a message to someone
    /// in `zone` may go (Unix ms). Checked minute by minute from local
    /// time, so daylight-saving jumps need no special case: a local time a
    /// jump skips simply never occurs.
    pub fn next_send_ms(&self, now_ms: i64, zone: Option<&str>) -> i64 {
        let start = self.start_ms.map_or(now_ms, |s| s.max(now_ms));
        if self.window.is_none() && self.quiet.is_none() {
            return start;
        }
        let tz: Tz = zone
            .and_then(|z| z.parse().ok())
            .or(self.default_zone)
            .unwrap_or(Tz::UTC);
        let mut t = Utc
            .timestamp_millis_opt(start)
            .single()
            .unwrap_or_else(Utc::now);
        if self.allowed(t.with_timezone(&tz).time()) {
            return start;
        }
        // To the next whole minute, then minute by minute for at most two
        // days (a window of one minute a day is found within one).
        t = (t + Duration::minutes(1))
            .with_second(0)
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or(t);
        for _ in 0..(2 * 24 * 60) {
            if self.allowed(t.with_timezone(&tz).time()) {
                return t.timestamp_millis();
            }
            t += Duration::minutes(1);
        }
        start
    }
}

/// Local time of day at a UTC instant in a zone (for checks and reports).
pub fn local_time(ms: i64, zone: &str) -> Option<NaiveTime> {
    let tz: Tz = zone.parse().ok()?;
    let t: DateTime<Utc> = Utc.timestamp_millis_opt(ms).single()?;
    Some(t.with_timezone(&tz).time())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn at(ms: i64) -> String {
        Utc.timestamp_millis_opt(ms).unwrap().to_rfc3339()
    }

    fn lunch() -> Timing {
        Timing {
            window: Some(Span::parse("12:00", "13:30").unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn each_zone_gets_its_own_noon() {
        let now = ms("2027-03-13T22:00:00Z");
        let t = lunch();
        // Auckland is UTC+13 in March (daylight time).
        assert_eq!(
            at(t.next_send_ms(now, Some("Pacific/Auckland"))),
            "2027-03-13T23:00:00+00:00"
        );
        // Kolkata is UTC+5:30: a half-hour offset.
        assert_eq!(
            at(t.next_send_ms(now, Some("Asia/Kolkata"))),
            "2027-03-14T06:30:00+00:00"
        );
        // Los Angeles springs forward on 14 March 2027: noon is UTC-7 that day.
        assert_eq!(
            at(t.next_send_ms(now, Some("America/Los_Angeles"))),
            "2027-03-14T19:00:00+00:00"
        );
        // The day before, noon was still UTC-8.
        assert_eq!(
            at(t.next_send_ms(ms("2027-03-13T05:00:00Z"), Some("America/Los_Angeles"))),
            "2027-03-13T20:00:00+00:00"
        );
        // Inside the window already: at once.
        let inside = ms("2027-03-14T07:00:00Z");
        assert_eq!(t.next_send_ms(inside, Some("Asia/Kolkata")), inside);
    }

    #[test]
    fn start_quiet_hours_default_zone_and_skipped_local_times() {
        let start = ms("2027-03-01T09:00:00Z");
        let t = Timing {
            start_ms: Some(start),
            ..Default::default()
        };
        assert_eq!(t.next_send_ms(ms("2027-02-01T00:00:00Z"), None), start);
        let later = ms("2027-03-02T00:00:00Z");
        assert_eq!(t.next_send_ms(later, None), later);

        // Quiet hours across midnight are never crossed.
        let quiet = Timing {
            quiet: Some(Span::parse("21:00", "08:00").unwrap()),
            default_zone: Some("Europe/Berlin".parse().unwrap()),
            ..Default::default()
        };
        // 23:30 in Berlin (UTC+1) → 08:00 local = 07:00Z; unknown zones use
        // the campaign's default.
        assert_eq!(
            at(quiet.next_send_ms(ms("2027-01-10T22:30:00Z"), Some("Not/AZone"))),
            "2027-01-11T07:00:00+00:00"
        );

        // 02:30 does not exist in Los Angeles on 14 March 2027.
        let night = Timing {
            window: Some(Span::parse("02:30", "02:45").unwrap()),
            ..Default::default()
        };
        let due = night.next_send_ms(ms("2027-03-14T08:00:00Z"), Some("America/Los_Angeles"));
        assert_eq!(
            at(due),
            "2027-03-15T09:30:00+00:00",
            "the next day's 02:30 PDT"
        );
        assert!(Span::parse("25:00", "26:00").is_err());
        assert!(Span::parse("10:00", "10:00").is_err());
    }
}
