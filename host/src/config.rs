//! `squall.toml`: where a deployment keeps its queues and state, and how
//! hard each stage's workers may pull. A campaign file says *what* to send;
//! this file says *where it runs*. Every setting has a default, so a missing
//! file means "one machine, embedded queue, SQLite in ./squall-data".
//!
//! Environment variables override the file (12-factor deployments set them
//! per machine, the file is shared):
//!
//! | variable                 | overrides                                    |
//! |--------------------------|----------------------------------------------|
//! | `SQUALL_DATA_DIR`        | `data_dir`                                   |
//! | `SQUALL_QUEUE`           | `queue.backend` (`embedded` or `sqs`)        |
//! | `SQUALL_SQS_ENDPOINT`    | `queue.endpoint` (SQS-compatible servers)    |
//! | `SQUALL_SQS_PREFIX`      | `queue.prefix`                               |
//! | `SQUALL_STORE`           | `store.url`: `postgres://…` or a SQLite dir  |
//!
//! AWS region and credentials come from the standard AWS environment and
//! config files (`AWS_REGION`, `AWS_PROFILE`, …); `queue.region` wins.
//!
//! Hand-written overrides rather than a layered-config crate: five keys,
//! each documented above, and a typo in an environment variable name must
//! not silently do nothing (see `Config::load`'s check of `SQUALL_*`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::delivery::provider::ProviderConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Embedded queue and SQLite store files, outbox, rejects, unpacked
    /// campaign bundles. Relative to the config file.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub stage: StagesConfig,
    /// Named ways out (`[[provider]]`), which campaigns list in order of
    /// preference: `[delivery] providers = ["primary", "backup"]`.
    #[serde(default, rename = "provider")]
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub tracking: TrackingConfig,
    /// The deployment's frequency cap; a campaign's `[frequency]` wins.
    #[serde(default)]
    pub frequency: crate::campaign::FrequencySection,
}

/// `"7d"`, `"36h"`: a duration as people write it (humantime).
pub fn duration_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

/// `squall serve`: where it listens and who may do what.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer tokens, each with a role. Without any, `squall serve` only
    /// listens on a loopback address and everyone there is `admin` (one
    /// person's machine); it refuses to listen elsewhere.
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenConfig>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
            tokens: Vec::new(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub role: Role,
    /// The environment variable holding the token (secrets stay out of the
    /// file).
    pub token_env: String,
}

/// What a bearer token may do. Each role may do everything the ones
/// below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only: campaigns, stats, the suppression list, metrics.
    Analyst,
    /// And create and validate campaigns (not launch or steer them).
    Editor,
    /// Everything: launch, pause, resume, cancel, suppressions, events.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Analyst => "analyst",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }
}

/// How tracking and provider feedback are read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackingConfig {
    /// A conversion counts for the last campaign message the recipient got
    /// within this window before it.
    #[serde(default = "default_attribution", deserialize_with = "duration_text")]
    pub attribution_window: Duration,
    /// Count machine opens (privacy-proxy prefetches) in open rates.
    #[serde(default)]
    pub count_machine_opens: bool,
    /// Check the signature of every SNS message (`/hooks/ses`) against the
    /// certificate AWS signs with. Turn off only behind a private network.
    #[serde(default = "yes")]
    pub verify_sns: bool,
    /// URL prefixes SNS signing certificates and subscription URLs may come
    /// from, besides `https://sns.<region>.amazonaws.com/`.
    #[serde(default)]
    pub sns_trusted_urls: Vec<String>,
    /// SNS topics accepted; empty: any (signed) topic.
    #[serde(default)]
    pub sns_topics: Vec<String>,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        TrackingConfig {
            attribution_window: default_attribution(),
            count_machine_opens: false,
            verify_sns: true,
            sns_trusted_urls: Vec::new(),
            sns_topics: Vec::new(),
        }
    }
}

fn default_attribution() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    #[default]
    Embedded,
    Sqs,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(default)]
    pub backend: QueueBackend,
    /// SQS: queue names are `<prefix><stage>` and `<prefix><stage>-dlq`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// SQS: explicit endpoint for SQS-compatible servers (moto, LocalStack).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// SQS: explicit queue URLs per stage instead of names from the prefix.
    #[serde(default)]
    pub urls: StageUrls,
    /// A message received this many times goes to the dead-letter queue
    /// (the worker dead-letters after `limits.max_attempts` with a reason;
    /// SQS's redrive policy is the safety net for workers that die on it).
    #[serde(default = "default_max_receives")]
    pub max_receives: u32,
    /// How long a received batch stays invisible; a worker extends it
    /// while the batch is still running (heartbeat).
    #[serde(default = "default_visibility_s")]
    pub visibility_timeout_s: u64,
    /// Long-polling wait per receive (SQS allows up to 20 s).
    #[serde(default = "default_wait_s")]
    pub wait_s: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageUrls {
    pub segment: Option<String>,
    pub personalise: Option<String>,
    pub send: Option<String>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            backend: QueueBackend::Embedded,
            prefix: default_prefix(),
            endpoint: None,
            region: None,
            urls: StageUrls::default(),
            max_receives: default_max_receives(),
            visibility_timeout_s: default_visibility_s(),
            wait_s: default_wait_s(),
        }
    }
}

impl QueueConfig {
    pub fn visibility(&self) -> Duration {
        Duration::from_secs(self.visibility_timeout_s)
    }
    pub fn wait(&self) -> Duration {
        Duration::from_secs(self.wait_s)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://user@host:port/db`, or a directory for SQLite (default:
    /// `data_dir`).
    pub url: Option<String>,
    /// PostgreSQL connections per process.
    #[serde(default = "default_pool")]
    pub max_connections: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            max_connections: default_pool(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Postgres(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagesConfig {
    #[serde(default)]
    pub segment: StageLimits,
    #[serde(default)]
    pub personalise: StageLimits,
    #[serde(default)]
    pub send: StageLimits,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageLimits {
    /// Batches one worker process works on at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Recipients per queue message (intake only: later stages keep the
    /// batches they are given).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Batches received ahead of a free worker slot.
    #[serde(default = "default_read_ahead")]
    pub read_ahead: usize,
}

impl Default for StageLimits {
    fn default() -> Self {
        StageLimits {
            concurrency: default_concurrency(),
            batch_size: default_batch_size(),
            read_ahead: default_read_ahead(),
        }
    }
}

impl StagesConfig {
    pub fn get(&self, stage: Stage) -> &StageLimits {
        match stage {
            Stage::Segment => &self.segment,
            Stage::Personalise => &self.personalise,
            Stage::Send => &self.send,
        }
    }
}

/// A pipeline stage, as workers and queues name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Stage {
    Segment,
    Personalise,
    Send,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Segment, Stage::Personalise, Stage::Send];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Segment => "segment",
            Stage::Personalise => "personalise",
            Stage::Send => "send",
        }
    }

    pub fn next(self) -> Option<Stage> {
        match self {
            Stage::Segment => Some(Stage::Personalise),
            Stage::Personalise => Some(Stage::Send),
            Stage::Send => None,
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("squall-data")
}
fn default_prefix() -> String {
    "squall-".into()
}
fn default_max_receives() -> u32 {
    5
}
fn default_visibility_s() -> u64 {
    120
}
fn default_wait_s() -> u64 {
    10
}
fn default_pool() -> usize {
    8
}
fn default_concurrency() -> usize {
    2
}
fn default_batch_size() -> usize {
    500
}
fn default_read_ahead() -> usize {
    2
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

const ENV_KEYS: [&str; 5] = [
    "SQUALL_DATA_DIR",
    "SQUALL_QUEUE",
    "SQUALL_SQS_ENDPOINT",
    "SQUALL_SQS_PREFIX",
    "SQUALL_STORE",
];

impl Config {
    /// Reads `path` (or the defaults when `None`), then applies the
    /// environment. Relative paths are resolved against the file's folder.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, |k| std::env::var(k).ok())
    }

    pub fn load_with_env(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let (mut config, base, shown) = match path {
            Some(p) => {
                let shown = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: shown.clone(),
                    source,
                })?;
                let config: Config = toml::from_str(&text).map_err(|e| {
                    let (line, col) = e.span().map(|s| line_col(&text, s.start)).unwrap_or((1, 1));
                    ConfigError::Invalid {
                        path: format!("{shown}:{line}:{col}"),
                        message: e.message().trim().to_string(),
                    }
                })?;
                let base = p.parent().unwrap_or(Path::new(".")).to_path_buf();
                (config, base, shown)
            }
            None => (
                toml::from_str::<Config>("").expect("defaults parse"),
                PathBuf::from("."),
                "(defaults)".to_string(),
            ),
        };
        let invalid = |message: String| ConfigError::Invalid {
            path: shown.clone(),
            message,
        };
        if let Some(v) = env("SQUALL_DATA_DIR") {
            config.data_dir = PathBuf::from(v);
        } else if config.data_dir.is_relative() && path.is_some() {
            config.data_dir = base.join(&config.data_dir);
        }
        if let Some(v) = env("SQUALL_QUEUE") {
            config.queue.backend = match v.as_str() {
                "embedded" => QueueBackend::Embedded,
                "sqs" => QueueBackend::Sqs,
                other => {
                    return Err(invalid(format!(
                        "SQUALL_QUEUE={other}: use `embedded` or `sqs`"
                    )));
                }
            }
        }
        if let Some(v) = env("SQUALL_SQS_ENDPOINT") {
            config.queue.endpoint = Some(v);
        }
        if let Some(v) = env("SQUALL_SQS_PREFIX") {
            config.queue.prefix = v;
        }
        if let Some(v) = env("SQUALL_STORE") {
            config.store.url = Some(v);
        }
        config.check().map_err(invalid)?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for p in &self.providers {
            p.check().map_err(|e| e.to_string())?;
            if !names.insert(p.name.as_str()) {
                return Err(format!("provider `{}` is defined twice", p.name));
            }
        }
        let q = &self.queue;
        if q.wait_s > 20 {
            return Err("queue.wait_s is at most 20 (SQS's long-polling limit)".into());
        }
        if q.visibility_timeout_s == 0 || q.visibility_timeout_s > 12 * 3600 {
            return Err("queue.visibility_timeout_s must be between 1 and 43200".into());
        }
        if q.max_receives == 0 || q.max_receives > 1000 {
            return Err("queue.max_receives must be between 1 and 1000".into());
        }
        if q.prefix.is_empty()
            || !q
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err("queue.prefix must be letters, digits, `-` or `_`".into());
        }
        for stage in Stage::ALL {
            let l = self.stage.get(stage);
            if l.concurrency == 0 || l.concurrency > 256 {
                return Err(format!(
                    "stage.{}.concurrency must be between 1 and 256",
                    stage.name()
                ));
            }
            if !(1..=10_000).contains(&l.batch_size) {
                return Err(format!(
                    "stage.{}.batch_size must be between 1 and 10000",
                    stage.name()
                ));
            }
        }
        if self.store.max_connections == 0 {
            return Err("store.max_connections must be at least 1".into());
        }
        Ok(())
    }

    pub fn store_location(&self) -> StoreLocation {
        match &self.store.url {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                StoreLocation::Postgres(u.clone())
            }
            Some(dir) => StoreLocation::Sqlite(PathBuf::from(dir)),
            None => StoreLocation::Sqlite(self.data_dir.clone()),
        }
    }

    /// `SQUALL_*` variables this build does not know: almost always a typo
    /// that would otherwise be silently ignored.
    pub fn unknown_env() -> Vec<String> {
        std::env::vars()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with("SQUALL_") && !ENV_KEYS.contains(&k.as_str()))
            .filter(|k| !INTERNAL_ENV.contains(&k.as_str()))
            .collect()
    }
}

/// Variables Squall reads elsewhere (CLI options, build, tests, caches),
/// not config.
const INTERNAL_ENV: [&str; 10] = [
    "SQUALL_CONFIG",
    "SQUALL_LOG_FORMAT",
    "SQUALL_CACHE_DIR",
    "SQUALL_WASM_TARGET_DIR",
    "SQUALL_COMPONENTS_DIR",
    "SQUALL_LOG",
    "SQUALL_TEST_SQS_ENDPOINT",
    "SQUALL_TEST_POSTGRES",
    "SQUALL_TRACKING_KEY",
    "SQUALL_FAKE_CLOCK",
];

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("squall.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn defaults_are_one_machine() {
        let c = Config::load_with_env(None, |_| None).unwrap();
        assert_eq!(c.queue.backend, QueueBackend::Embedded);
        assert_eq!(
            c.store_location(),
            StoreLocation::Sqlite(PathBuf::from("squall-data"))
        );
        assert_eq!(c.stage.send.concurrency, 2);
    }

    #[test]
    fn reads_the_file_and_the_environment_wins() {
        let (dir, path) = write(
            r#"
data_dir = "state"
[queue]
backend = "sqs"
prefix = "prod-"
endpoint = "http://127.0.0.1:1"
[store]
url = "postgres://postgres@127.0.0.1/squall"
[stage.send]
concurrency = 8
"#,
        );
        let c = Config::load_with_env(Some(&path), |k| {
            (k == "SQUALL_SQS_ENDPOINT").then(|| "http://127.0.0.1:5000".to_string())
        })
        .unwrap();
        assert_eq!(c.data_dir, dir.path().join("state"));
        assert_eq!(c.queue.backend, QueueBackend::Sqs);
        assert_eq!(c.queue.prefix, "prod-");
        assert_eq!(c.queue.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(c.stage.send.concurrency, 8);
        assert_eq!(
            c.store_location(),
            StoreLocation::Postgres("postgres://postgres@127.0.0.1/squall".into())
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_say_where() {
        let (_d, path) = write("[queue]\nbackend = \"sqs\"\nvisibilty_timeout_s = 3\n");
        let e = Config::load_with_env(Some(&path), |_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("squall.toml:3:1"), "{e}");
        assert!(e.contains("visibilty_timeout_s"), "{e}");

        let (_d, path) = write("[queue]\nwait_s = 30\n");
        let e = Config::load_with_env(Some(&path), |_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 20"), "{e}");

        let e = Config::load_with_env(None, |k| (k == "SQUALL_QUEUE").then(|| "kafka".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("use `embedded` or `sqs`"), "{e}");
    }
}
