//! A local HTTP server for the provider tests: it records every request
//! (method, path, headers, body, when) and answers what the test's policy
//! says, so a test can make it return 429 or 500 and assert what Squall
//! did about it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
    /// The status the server answered.
    pub status: u16,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn form(&self) -> HashMap<String, String> {
        form_urlencoded::parse(&self.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// What to answer: the request so far, and how many earlier requests
/// carried the same `key` (the test's notion of "the same message").
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    pub fn ok() -> Answer {
        Answer {
            status: 201,
            headers: Vec::new(),
        }
    }
}

type Policy = dyn Fn(&Recorded, usize) -> Answer + Send + Sync;
type KeyFn = dyn Fn(&Recorded) -> String + Send + Sync;

struct Shared {
    /// How long each answer takes, and how many requests were in flight
    /// at once (now, and at most).
    delay: std::time::Duration,
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
    log: Mutex<Vec<Recorded>>,
    seen: Mutex<HashMap<String, usize>>,
    key: Box<KeyFn>,
    policy: Box<Policy>,
}

pub struct Recorder {
    pub port: u16,
    shared: Arc<Shared>,
    _runtime: std::thread::JoinHandle<()>,
}

impl Recorder {
    /// Starts the server on a free port of 127.0.0.1. `key` names the
    /// message a request is for; `policy` gets it with the number of
    /// requests for that key before this one.
    pub fn start(
        key: impl Fn(&Recorded) -> String + Send + Sync + 'static,
        policy: impl Fn(&Recorded, usize) -> Answer + Send + Sync + 'static,
    ) -> Recorder {
        Recorder::start_slow(std::time::Duration::ZERO, key, policy)
    }

    /// `start`, each answer taking `delay`: requests overlap, and
    /// `max_in_flight` says how many did at most.
    pub fn start_slow(
        delay: std::time::Duration,
        key: impl Fn(&Recorded) -> String + Send + Sync + 'static,
        policy: impl Fn(&Recorded, usize) -> Answer + Send + Sync + 'static,
    ) -> Recorder {
        let shared = Arc::new(Shared {
            delay,
            in_flight: Default::default(),
            max_in_flight: Default::default(),
            log: Mutex::new(Vec::new()),
            seen: Mutex::new(HashMap::new()),
            key: Box::new(key),
            policy: Box::new(policy),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = shared.clone();
        let runtime = std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let app = axum::Router::new().fallback(record).with_state(state);
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    axum::serve(listener, app).await.unwrap();
                });
        });
        Recorder {
            port,
            shared,
            _runtime: runtime,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    #[allow(dead_code)] // not every test binary asks
    pub fn max_in_flight(&self) -> usize {
        self.shared
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.log.lock().unwrap().clone()
    }
}

async fn record(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut r = Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: body.to_vec(),
        at: Instant::now(),
        status: 0,
    };
    let key = (s.key)(&r);
    let before = {
        let mut seen = s.seen.lock().unwrap();
        let n = seen.entry(key).or_default();
        *n += 1;
        *n - 1
    };
    use std::sync::atomic::Ordering::SeqCst;
    let now = s.in_flight.fetch_add(1, SeqCst) + 1;
    s.max_in_flight.fetch_max(now, SeqCst);
    tokio::time::sleep(s.delay).await;
    s.in_flight.fetch_sub(1, SeqCst);
    let answer = (s.policy)(&r, before);
    r.status = answer.status;
    s.log.lock().unwrap().push(r);
    let mut resp = (
        StatusCode::from_u16(answer.status).unwrap(),
        format!("{{\"status\": {}}}", answer.status),
    )
        .into_response();
    for (k, v) in answer.headers {
        resp.headers_mut().insert(k, v.parse().unwrap());
    }
    resp
}
