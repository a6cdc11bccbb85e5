//! Campaign time: what "now" is for schedules and send windows. Real time,
//! unless `SQUALL_FAKE_CLOCK` sets a start and a speed, e.g.
//! `2027-03-13T22:00:00Z*3600` (an hour a second), so that tests of windows
//! across a day of time zones run in seconds instead of sleeping for hours.
//! Leases, visibility timeouts and rate limits always use real time.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub const FAKE_CLOCK_ENV: &str = "SQUALL_FAKE_CLOCK";

struct Fake {
    real_start: Instant,
    fake_start_ms: i64,
    speed: f64,
}

fn fake() -> Option<&'static Fake> {
    static FAKE: OnceLock<Option<Fake>> = OnceLock::new();
    FAKE.get_or_init(|| {
        let v = std::env::var(FAKE_CLOCK_ENV).ok()?;
        let (start, speed) = v.split_once('*').unwrap_or((v.as_str(), "1"));
        let start = humantime::parse_rfc3339_weak(start.trim())
            .unwrap_or_else(|e| panic!("{FAKE_CLOCK_ENV}={v}: the start must be RFC 3339 ({e})"));
        let speed: f64 = speed
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{FAKE_CLOCK_ENV}={v}: the speed must be a number ({e})"));
        tracing::warn!("campaign time is fake: {v}");
        Some(Fake {
            real_start: Instant::now(),
            fake_start_ms: start
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            speed,
        })
    })
    .as_ref()
}

/// Unix milliseconds, campaign time.
pub fn now_ms() -> i64 {
    match fake() {
        Some(f) => {
            f.fake_start_ms + (f.real_start.elapsed().as_secs_f64() * 1000.0 * f.speed) as i64
        }
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    }
}

/// Campaign time when `real_ms` (Unix ms, real time, as rate limits
/// count) comes: what a wait for a rate's turn is parked until.
pub fn at_real_ms(real_ms: i64) -> i64 {
    let real_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let speed = fake().map_or(1.0, |f| f.speed);
    now_ms() + ((real_ms - real_now) as f64 * speed) as i64
}

/// An RFC 3339 time (`2027-03-01T09:00:00Z`) as Unix milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    humantime::parse_rfc3339_weak(text.trim())
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as i64)
}
