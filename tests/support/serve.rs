//! A real `squall serve` process for the API, tracking and dashboard
//! tests, with one bearer token per role.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN: &str = "admin-token-0123456789abcdef";
pub const EDITOR: &str = "editor-token-0123456789abcdef";
pub const ANALYST: &str = "analyst-token-0123456789abcdef";

pub struct Serve {
    pub port: u16,
    pub config: PathBuf,
    child: Child,
}

/// A squall.toml with `data_dir` (the embedded store a `squall run --data-dir`
/// of the same folder writes), the three role tokens and `extra` TOML.
pub fn write_config(dir: &Path, data_dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("squall.toml");
    std::fs::write(
        &path,
        format!(
            r#"data_dir = "{}"

[[api.token]]
role = "admin"
token_env = "TEST_ADMIN_TOKEN"

[[api.token]]
role = "editor"
token_env = "TEST_EDITOR_TOKEN"

[[api.token]]
role = "analyst"
token_env = "TEST_ANALYST_TOKEN"

{extra}
"#,
            data_dir.display()
        ),
    )
    .unwrap();
    path
}

impl Serve {
    pub fn start(config: &Path) -> Serve {
        let port = super::free_port();
        let log = std::fs::File::create(config.with_extension("serve.log")).unwrap();
        let child = super::squall()
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--config",
            ])
            .arg(config)
            .env("TEST_ADMIN_TOKEN", ADMIN)
            .env("TEST_EDITOR_TOKEN", EDITOR)
            .env("TEST_ANALYST_TOKEN", ANALYST)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start squall serve");
        let s = Serve {
            port,
            config: config.to_path_buf(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "squall serve did not start: {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_extension("serve.log")).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that never follows redirects (a test looks at them).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36")
        .build()
        .unwrap()
}

/// The first `prefix…` URL in `text`, up to a quote, space or bracket.
pub fn find_url(text: &str, prefix: &str) -> Option<String> {
    let i = text.find(prefix)?;
    let rest = &text[i..];
    let end = rest
        .find(|c: char| c == '"' || c == '\'' || c.is_whitespace() || c == '>' || c == '<')
        .unwrap_or(rest.len());
    Some(rest[..end].to_string())
}
