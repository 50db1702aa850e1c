//! A fault-injecting HTTP/1.1 proxy, put in front of a real registry or the S3 server to
//! prove what the engine does when the network and the servers misbehave.
//!
//! Per request (matching method and a path substring, on the nth occurrence, the first n,
//! every nth or every one), or at random with a seed, it can:
//!
//! - answer `429 Too Many Requests` with `Retry-After`;
//! - answer a 5xx (for S3, with S3's `SlowDown` or `InternalError` XML body);
//! - answer `401` with a `WWW-Authenticate` challenge (an expired token);
//! - add latency before forwarding, or slow a response body down to a byte rate;
//! - reset the connection (TCP RST) in the middle of a response body, or of a request body;
//! - truncate a response body (clean close before `Content-Length` is reached);
//! - flip one byte of a response body;
//! - answer with a canned response, or rewrite the upstream's body.
//!
//! It counts requests and injected faults, and logs every request with the fault it got and
//! the status sent back ([`FaultProxy::log`]).
//!
//! # Connections
//!
//! One request per connection. The proxy reads a request, forwards it on a new upstream
//! connection with `Connection: close`, streams the answer back with `Connection: close`,
//! and closes. Keep-alive is deliberately not supported: a fault then hits exactly one
//! request, request counts are exact, and a reset never takes other requests down with it.
//! Clients (reqwest, the AWS SDK) simply open a new connection for the next request.
//!
//! # Bodies
//!
//! Request bodies (`Content-Length` or chunked) are streamed upstream as they arrive. An
//! `Expect: 100-continue` is answered by the proxy itself and not forwarded. Response bodies
//! are streamed back with the upstream's framing: a `Content-Length` body keeps its length
//! (so a truncated or reset body is detectable by the client), a chunked body is re-chunked,
//! a close-delimited body stays close-delimited. `Host` is forwarded unchanged, so
//! registries build upload `Location`s that point back through the proxy, and AWS request
//! signatures stay valid.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::BufReader;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Longest request or response head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Bytes read from a body at once.
const READ_CHUNK: usize = 64 * 1024;

/// What kind of server is behind the proxy; decides the bodies of injected errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// An OCI registry: JSON `{"errors":[...]}` bodies.
    Registry,
    /// S3: XML `<Error>` bodies (`SlowDown` for 503 and 429, `InternalError` otherwise).
    S3,
}

/// A response served by the proxy instead of the upstream's.
#[derive(Debug, Clone)]
pub struct Canned {
    /// HTTP status.
    pub status: u16,
    /// Headers (`Content-Length` and `Connection` are added).
    pub headers: Vec<(String, String)>,
    /// Body (not sent for `HEAD`).
    pub body: Bytes,
}

impl Canned {
    /// A `200 OK` with a content type and a body.
    pub fn ok(content_type: &str, body: impl Into<Bytes>) -> Canned {
        Canned {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Canned {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// The function inside a [`Rewrite`].
type RewriteFn = dyn Fn(&[u8]) -> Vec<u8> + Send + Sync;

/// A function rewriting a whole response body.
#[derive(Clone)]
pub struct Rewrite(Arc<RewriteFn>);

impl Rewrite {
    /// Wraps a rewriting function.
    pub fn new(f: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static) -> Rewrite {
        Rewrite(Arc::new(f))
    }
}

impl fmt::Debug for Rewrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Rewrite(..)")
    }
}

/// One fault.
#[derive(Debug, Clone)]
pub enum Fault {
    /// `429` with `Retry-After: <seconds>`, without asking the upstream.
    TooManyRequests {
        /// The `Retry-After` value.
        retry_after_seconds: u64,
    },
    /// A 5xx status (500, 503, ...), without asking the upstream.
    ServerError {
        /// The status.
        status: u16,
    },
    /// `401` with this `WWW-Authenticate` value, without asking the upstream.
    Unauthorized {
        /// The challenge, such as `Basic realm="x"`.
        challenge: String,
    },
    /// Wait this long before forwarding the request.
    Latency(Duration),
    /// Send the response body at this rate.
    SlowBody {
        /// Bytes per second.
        bytes_per_second: u64,
    },
    /// Send this many bytes of the response body, then reset the connection (RST).
    ResetBody {
        /// Bytes sent before the reset.
        after: u64,
    },
    /// Send this many bytes of the response body, then close cleanly (FIN), short of
    /// the announced length.
    TruncateBody {
        /// Bytes sent before the close.
        after: u64,
    },
    /// Flip (XOR 0xff) the response body byte at this offset (the last byte if the
    /// body is shorter and its length is known).
    FlipByte {
        /// Offset in the body.
        offset: u64,
    },
    /// Forward this many bytes of the request body, then reset both connections.
    ResetRequestBody {
        /// Bytes forwarded before the reset.
        after: u64,
    },
    /// Answer with this response, without asking the upstream.
    Respond(Canned),
    /// Ask the upstream, then replace its body with the function's result.
    RewriteBody(Rewrite),
}

impl Fault {
    /// A short name, for logs and counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::TooManyRequests { .. } => "429",
            Fault::ServerError { .. } => "5xx",
            Fault::Unauthorized { .. } => "401",
            Fault::Latency(_) => "latency",
            Fault::SlowBody { .. } => "slow-body",
            Fault::ResetBody { .. } => "reset-body",
            Fault::TruncateBody { .. } => "truncate-body",
            Fault::FlipByte { .. } => "flip-byte",
            Fault::ResetRequestBody { .. } => "reset-request-body",
            Fault::Respond(_) => "respond",
            Fault::RewriteBody(_) => "rewrite-body",
        }
    }
}

/// Which of the requests matching a rule get its fault (counted from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Only the nth.
    Nth(u64),
    /// The first n.
    FirstN(u64),
    /// Every nth (n, 2n, 3n, ...).
    EveryNth(u64),
    /// All of them.
    Every,
}

impl When {
    fn fires(self, n: u64) -> bool {
        match self {
            When::Nth(k) => n == k,
            When::FirstN(k) => n <= k,
            When::EveryNth(k) => k > 0 && n % k == 0,
            When::Every => true,
        }
    }
}

/// A deterministic fault: requests with this method (`*` for any) whose path and query
/// contain `path_contains` are counted, and those selected by `when` get `fault`.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Method to match, or `*`.
    pub method: String,
    /// Substring of the path and query to match.
    pub path_contains: String,
    /// Which matching requests get the fault.
    pub when: When,
    /// The fault.
    pub fault: Fault,
}

impl Rule {
    /// A rule.
    pub fn new(method: &str, path_contains: impl Into<String>, when: When, fault: Fault) -> Rule {
        Rule {
            method: method.to_ascii_uppercase(),
            path_contains: path_contains.into(),
            when,
            fault,
        }
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        (self.method == "*" || self.method == method) && path.contains(&self.path_contains)
    }
}

/// Faults at random, reproducible from a seed (given the same order of requests).
#[derive(Debug, Clone)]
pub struct RandomFaults {
    /// Seed of the generator.
    pub seed: u64,
    /// Chance that a matching request gets a fault.
    pub probability: f64,
    /// Faults to pick from, uniformly.
    pub faults: Vec<Fault>,
    /// Method to match, or `*`.
    pub method: String,
    /// Substring of the path and query to match.
    pub path_contains: String,
    /// No more faults after this many.
    pub max_faults: u64,
    /// A request (same method and path) gets at most this many faults in a row, so a
    /// client with that many retries always gets through.
    pub max_in_a_row: u32,
}

/// One request the proxy saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The `X-Amz-Target` header (the operation of JSON AWS APIs such as ECR's).
    pub amz_target: Option<String>,
    /// Whether the request carried an `Authorization` header (its value is not kept).
    pub authorization: bool,
    /// The fault injected, if any.
    pub fault: Option<&'static str>,
    /// The status sent to the client, if a response head was sent.
    pub status: Option<u16>,
}

struct RandomState {
    config: RandomFaults,
    rng: StdRng,
    injected: u64,
}

#[derive(Default)]
struct State {
    rules: Vec<(Rule, u64)>,
    random: Option<RandomState>,
    in_a_row: HashMap<(String, String), u32>,
    log: Vec<RequestRecord>,
    faults: u64,
}

struct Shared {
    upstream: String,
    flavor: Flavor,
    state: Mutex<State>,
}

impl Shared {
    /// Logs a request and picks its fault.
    fn admit(
        &self,
        method: &str,
        path: &str,
        amz_target: Option<String>,
        authorization: bool,
    ) -> (usize, Option<Fault>) {
        let mut state = self.state.lock().expect("proxy state");
        let mut fault = None;
        for (rule, seen) in state.rules.iter_mut() {
            if rule.matches(method, path) {
                *seen += 1;
                if fault.is_none() && rule.when.fires(*seen) {
                    fault = Some(rule.fault.clone());
                }
            }
        }
        let key = (method.to_owned(), path.to_owned());
        if fault.is_none() {
            let row = state.in_a_row.get(&key).copied().unwrap_or(0);
            if let Some(random) = state.random.as_mut() {
                let c = &random.config;
                let matches =
                    (c.method == "*" || c.method == method) && path.contains(&c.path_contains);
                if matches && !c.faults.is_empty() {
                    // Draw for every matching request, so the sequence depends only on
                    // the order of requests, not on which ones were capped.
                    let roll: f64 = random.rng.random();
                    let pick = random.rng.random_range(0..c.faults.len());
                    if roll < c.probability
                        && random.injected < c.max_faults
                        && row < c.max_in_a_row
                    {
                        random.injected += 1;
                        fault = Some(c.faults[pick].clone());
                    }
                }
            }
            if fault.is_some() {
                state.in_a_row.insert(key, row + 1);
            } else {
                state.in_a_row.remove(&key);
            }
        }
        if fault.is_some() {
            state.faults += 1;
        }
        state.log.push(RequestRecord {
            method: method.to_owned(),
            path: path.to_owned(),
            amz_target,
            authorization,
            fault: fault.as_ref().map(Fault::kind),
            status: None,
        });
        (state.log.len() - 1, fault)
    }

    fn answered(&self, index: usize, status: u16) {
        if let Some(r) = self.state.lock().expect("proxy state").log.get_mut(index) {
            r.status = Some(status);
        }
    }
}

/// A running proxy; stops accepting connections when dropped.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FaultProxy(127.0.0.1:{} -> {})",
            self.port, self.shared.upstream
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 in front of `upstream`
    /// (`http://127.0.0.1:PORT` or `127.0.0.1:PORT`).
    pub async fn start(upstream: &str, flavor: Flavor) -> io::Result<FaultProxy> {
        let host_port = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            upstream: host_port,
            flavor,
            state: Mutex::default(),
        });
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let shared = accept_shared.clone();
                tokio::spawn(async move {
                    // A broken connection is what some faults are for; nothing to report.
                    let _ = handle(socket, &shared).await;
                });
            }
        });
        Ok(FaultProxy { port, shared, task })
    }

    /// The proxy's URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Adds a rule; the first rule (in the order added) that fires gives its fault.
    pub fn add_rule(&self, rule: Rule) {
        self.state().rules.push((rule, 0));
    }

    /// Removes every rule.
    pub fn clear_rules(&self) {
        self.state().rules.clear();
    }

    /// Sets (or with `None` removes) random faults; rules take precedence over them.
    pub fn set_random(&self, random: Option<RandomFaults>) {
        self.state().random = random.map(|config| RandomState {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            injected: 0,
        });
    }

    /// Requests seen.
    pub fn requests(&self) -> usize {
        self.state().log.len()
    }

    /// Faults injected.
    pub fn faults_injected(&self) -> u64 {
        self.state().faults
    }

    /// Every request seen, in order of arrival.
    pub fn log(&self) -> Vec<RequestRecord> {
        self.state().log.clone()
    }

    /// Requests with this method (`*` for any) whose path contains `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        let method = method.to_ascii_uppercase();
        self.state()
            .log
            .iter()
            .filter(|r| (method == "*" || r.method == method) && r.path.contains(path_contains))
            .count()
    }

    /// Requests whose `X-Amz-Target` ends with `operation` (`GetAuthorizationToken`).
    pub fn count_operation(&self, operation: &str) -> usize {
        self.state()
            .log
            .iter()
            .filter(|r| {
                r.amz_target
                    .as_deref()
                    .is_some_and(|t| t.ends_with(operation))
            })
            .count()
    }

    /// Registry blob GETs per digest (`sha256:<hex>`), faulted ones included.
    pub fn blob_gets(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in self.state().log.iter().filter(|r| r.method == "GET") {
            let path = r.path.split('?').next().unwrap_or_default();
            if let Some((_, digest)) = path.rsplit_once("/blobs/") {
                if digest.starts_with("sha256:") {
                    *out.entry(digest.to_owned()).or_insert(0) += 1;
                }
            }
        }
        out
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("proxy state")
    }
}

/// A request or response head.
struct Head {
    first: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn framing(&self) -> Framing {
        if self
            .get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            Framing::Chunked
        } else if let Some(len) = self
            .get("content-length")
            .and_then(|v| v.trim().parse().ok())
        {
            Framing::Length(len)
        } else {
            Framing::Eof
        }
    }
}

async fn read_head<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Option<Head>> {
    let mut total = 0;
    let mut line = Vec::new();
    let first = loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(None);
        }
        total += n;
        let text = String::from_utf8_lossy(&line).trim().to_owned();
        if !text.is_empty() {
            break text;
        }
        if total > MAX_HEAD_BYTES {
            return Err(io::Error::other("head too large"));
        }
    };
    let mut headers = Vec::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        total += n;
        if total > MAX_HEAD_BYTES {
            return Err(io::Error::other("head too large"));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            break;
        }
        if let Some((name, value)) = text.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    Ok(Some(Head { first, headers }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    Eof,
}

/// Reads the data of a body, whatever its framing.
struct BodyReader {
    framing: Framing,
    remaining: u64,
    done: bool,
}

impl BodyReader {
    fn new(framing: Framing) -> BodyReader {
        BodyReader {
            framing,
            remaining: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            done: framing == Framing::Empty,
        }
    }

    async fn next<R: AsyncBufRead + Unpin>(&mut self, r: &mut R) -> io::Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        match self.framing {
            Framing::Empty => Ok(None),
            Framing::Length(_) => {
                if self.remaining == 0 {
                    self.done = true;
                    return Ok(None);
                }
                let data = read_some(r, self.remaining).await?;
                self.remaining -= data.len() as u64;
                Ok(Some(data))
            }
            Framing::Eof => {
                let mut buf = vec![0u8; READ_CHUNK];
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    self.done = true;
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some(buf.into()))
            }
            Framing::Chunked => {
                if self.remaining == 0 {
                    let mut line = Vec::new();
                    if r.read_until(b'\n', &mut line).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    let text = String::from_utf8_lossy(&line);
                    let size = text.trim().split(';').next().unwrap_or_default().trim();
                    let size = u64::from_str_radix(size, 16)
                        .map_err(|_| io::Error::other(format!("bad chunk size {size:?}")))?;
                    if size == 0 {
                        // Trailers, up to the empty line.
                        loop {
                            line.clear();
                            if r.read_until(b'\n', &mut line).await? == 0
                                || line == b"\r\n"
                                || line == b"\n"
                            {
                                break;
                            }
                        }
                        self.done = true;
                        return Ok(None);
                    }
                    self.remaining = size;
                }
                let data = read_some(r, self.remaining).await?;
                self.remaining -= data.len() as u64;
                if self.remaining == 0 {
                    let mut crlf = Vec::new();
                    r.read_until(b'\n', &mut crlf).await?;
                }
                Ok(Some(data))
            }
        }
    }
}

async fn read_some<R: AsyncRead + Unpin>(r: &mut R, at_most: u64) -> io::Result<Bytes> {
    let want = (at_most as usize).min(READ_CHUNK);
    let mut buf = vec![0u8; want];
    let n = r.read(&mut buf).await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    buf.truncate(n);
    Ok(buf.into())
}

async fn write_data<W: AsyncWrite + Unpin>(
    w: &mut W,
    framing: Framing,
    data: &[u8],
) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    if framing == Framing::Chunked {
        w.write_all(format!("{:x}\r\n", data.len()).as_bytes())
            .await?;
        w.write_all(data).await?;
        w.write_all(b"\r\n").await
    } else {
        w.write_all(data).await
    }
}

async fn finish_body<W: AsyncWrite + Unpin>(w: &mut W, framing: Framing) -> io::Result<()> {
    if framing == Framing::Chunked {
        w.write_all(b"0\r\n\r\n").await?;
    }
    w.flush().await
}

fn is_hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "expect",
        "te",
        "upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Fault",
    }
}

/// The response of a fault answered by the proxy itself, if it is one.
fn local_answer(fault: &Fault, flavor: Flavor) -> Option<Canned> {
    let error = |status: u16, code: &str, message: &str| match flavor {
        Flavor::Registry => Canned {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: format!(r#"{{"errors":[{{"code":"{code}","message":"{message}"}}]}}"#).into(),
        },
        Flavor::S3 => {
            let s3_code = if status == 503 || status == 429 {
                "SlowDown"
            } else {
                "InternalError"
            };
            let s3_message = if s3_code == "SlowDown" {
                "Please reduce your request rate."
            } else {
                "We encountered an internal error. Please try again."
            };
            Canned {
                status,
                headers: vec![("Content-Type".into(), "application/xml".into())],
                body: format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{s3_code}</Code><Message>{s3_message}</Message><RequestId>fault-proxy</RequestId></Error>"
                )
                .into(),
            }
        }
    };
    match fault {
        Fault::TooManyRequests {
            retry_after_seconds,
        } => Some(
            error(429, "TOOMANYREQUESTS", "too many requests (injected)")
                .header("Retry-After", &retry_after_seconds.to_string()),
        ),
        Fault::ServerError { status } => {
            Some(error(*status, "UNAVAILABLE", "injected server error"))
        }
        Fault::Unauthorized { challenge } => Some(
            error(401, "UNAUTHORIZED", "authentication required (injected)")
                .header("WWW-Authenticate", challenge),
        ),
        Fault::Respond(canned) => Some(canned.clone()),
        _ => None,
    }
}

async fn write_canned<W: AsyncWrite + Unpin>(
    w: &mut W,
    canned: &Canned,
    head_only: bool,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", canned.status, reason(canned.status));
    for (name, value) in &canned.headers {
        if name.eq_ignore_ascii_case("content-length") || is_hop_by_hop(name) {
            continue;
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        canned.body.len()
    ));
    w.write_all(head.as_bytes()).await?;
    if !head_only {
        w.write_all(&canned.body).await?;
    }
    w.flush().await
}

fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

async fn handle(socket: TcpStream, shared: &Shared) -> io::Result<()> {
    let _ = socket.set_nodelay(true);
    let mut client = BufReader::new(socket);
    let Some(request) = read_head(&mut client).await? else {
        return Ok(());
    };
    let mut parts = request.first.split_whitespace();
    let method = parts.next().unwrap_or_default().to_ascii_uppercase();
    let path = parts.next().unwrap_or_default().to_owned();
    let (index, fault) = shared.admit(
        &method,
        &path,
        request.get("x-amz-target").map(str::to_owned),
        request.get("authorization").is_some(),
    );
    let mut request_body = BodyReader::new(match request.framing() {
        Framing::Eof => Framing::Empty,
        f => f,
    });
    let expects_continue = request
        .get("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects_continue {
        client
            .get_mut()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await?;
    }

    if let Some(canned) = fault.as_ref().and_then(|f| local_answer(f, shared.flavor)) {
        // Read the request body first: closing with unread data would reset the
        // connection, and the client might never see the answer.
        while request_body.next(&mut client).await?.is_some() {}
        write_canned(client.get_mut(), &canned, method == "HEAD").await?;
        shared.answered(index, canned.status);
        let _ = client.get_mut().shutdown().await;
        return Ok(());
    }
    if let Some(Fault::Latency(delay)) = &fault {
        tokio::time::sleep(*delay).await;
    }

    // Forward the request.
    let mut upstream = BufReader::new(TcpStream::connect(&shared.upstream).await?);
    let _ = upstream.get_ref().set_nodelay(true);
    let mut head = format!("{}\r\n", request.first);
    for (name, value) in &request.headers {
        if !is_hop_by_hop(name) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    upstream.get_mut().write_all(head.as_bytes()).await?;
    let request_framing = request_body.framing;
    let mut forwarded = 0u64;
    while let Some(data) = request_body.next(&mut client).await? {
        if let Some(Fault::ResetRequestBody { after }) = &fault {
            let keep = (*after - forwarded.min(*after)).min(data.len() as u64) as usize;
            write_data(upstream.get_mut(), request_framing, &data[..keep]).await?;
            forwarded += keep as u64;
            if forwarded >= *after {
                upstream.get_mut().flush().await?;
                reset(upstream.get_ref());
                reset(client.get_ref());
                return Ok(());
            }
            continue;
        }
        write_data(upstream.get_mut(), request_framing, &data).await?;
        forwarded += data.len() as u64;
    }
    if let Some(Fault::ResetRequestBody { .. }) = &fault {
        // The body was shorter than the reset point: reset before any answer instead.
        reset(upstream.get_ref());
        reset(client.get_ref());
        return Ok(());
    }
    finish_body(upstream.get_mut(), request_framing).await?;

    // Read the answer, skipping interim (1xx) responses.
    let response = loop {
        let Some(response) = read_head(&mut upstream).await? else {
            return Err(io::ErrorKind::UnexpectedEof.into());
        };
        let status: u16 = response
            .first
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(502);
        if !(100..200).contains(&status) {
            break (response, status);
        }
    };
    let (response, status) = response;
    let framing = if method == "HEAD" || status == 204 || status == 304 {
        Framing::Empty
    } else {
        response.framing()
    };
    let mut body = BodyReader::new(framing);

    if let Some(Fault::RewriteBody(rewrite)) = &fault {
        let mut whole = Vec::new();
        while let Some(data) = body.next(&mut upstream).await? {
            whole.extend_from_slice(&data);
        }
        let canned = Canned {
            status,
            headers: response
                .headers
                .iter()
                .filter(|(n, _)| !n.eq_ignore_ascii_case("transfer-encoding"))
                .cloned()
                .collect(),
            body: (rewrite.0)(&whole).into(),
        };
        write_canned(client.get_mut(), &canned, method == "HEAD").await?;
        shared.answered(index, status);
        let _ = client.get_mut().shutdown().await;
        return Ok(());
    }

    let mut head = format!("{}\r\n", response.first);
    for (name, value) in &response.headers {
        if !is_hop_by_hop(name) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    client.get_mut().write_all(head.as_bytes()).await?;
    shared.answered(index, status);

    let known_len = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    let mut sent = 0u64;
    while let Some(mut data) = body.next(&mut upstream).await? {
        let start = sent;
        let end = sent + data.len() as u64;
        match &fault {
            Some(Fault::FlipByte { offset }) => {
                let at = known_len.map_or(*offset, |n| (*offset).min(n.saturating_sub(1)));
                if (start..end).contains(&at) {
                    let mut owned = data.to_vec();
                    owned[(at - start) as usize] ^= 0xff;
                    data = owned.into();
                }
            }
            Some(Fault::ResetBody { after }) | Some(Fault::TruncateBody { after })
                if end >= *after =>
            {
                let keep = (*after - start) as usize;
                write_data(client.get_mut(), framing, &data[..keep]).await?;
                client.get_mut().flush().await?;
                if matches!(fault, Some(Fault::ResetBody { .. })) {
                    // Let the bytes sent reach the client: a reset discards unsent data.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    reset(client.get_ref());
                } else {
                    let _ = client.get_mut().shutdown().await;
                }
                return Ok(());
            }
            Some(Fault::SlowBody { bytes_per_second }) => {
                let piece = 8 * 1024;
                for part in data.chunks(piece) {
                    write_data(client.get_mut(), framing, part).await?;
                    client.get_mut().flush().await?;
                    let secs = part.len() as f64 / (*bytes_per_second).max(1) as f64;
                    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                }
                sent = end;
                continue;
            }
            _ => {}
        }
        write_data(client.get_mut(), framing, &data).await?;
        sent = end;
    }
    if let Some(Fault::ResetBody { .. } | Fault::TruncateBody { .. }) = &fault {
        // Shorter than the fault's offset: break it at the end instead.
        client.get_mut().flush().await?;
        reset(client.get_ref());
        return Ok(());
    }
    finish_body(client.get_mut(), framing).await?;
    let _ = client.get_mut().shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny upstream: answers every request with `body`, with a `Content-Length`, or
    /// chunked when `chunked`; echoes the request's path in `X-Path`.
    async fn upstream(body: &'static [u8], chunked: bool) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut socket = BufReader::new(socket);
                    let Ok(Some(head)) = read_head(&mut socket).await else {
                        return;
                    };
                    let mut reader = BodyReader::new(match head.framing() {
                        Framing::Eof => Framing::Empty,
                        f => f,
                    });
                    while let Ok(Some(_)) = reader.next(&mut socket).await {}
                    let path = head
                        .first
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("")
                        .to_owned();
                    let w = socket.get_mut();
                    let framing = if chunked {
                        let _ = w
                            .write_all(
                                format!("HTTP/1.1 200 OK\r\nX-Path: {path}\r\nTransfer-Encoding: chunked\r\n\r\n")
                                    .as_bytes(),
                            )
                            .await;
                        Framing::Chunked
                    } else {
                        let _ = w
                            .write_all(
                                format!(
                                    "HTTP/1.1 200 OK\r\nX-Path: {path}\r\nContent-Length: {}\r\n\r\n",
                                    body.len()
                                )
                                .as_bytes(),
                            )
                            .await;
                        Framing::Length(body.len() as u64)
                    };
                    for part in body.chunks(7) {
                        let _ = write_data(w, framing, part).await;
                    }
                    let _ = finish_body(w, framing).await;
                });
            }
        });
        format!("http://{addr}")
    }

    const BODY: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

    #[tokio::test]
    async fn forwards_and_injects_faults_by_rule() {
        for chunked in [false, true] {
            let proxy = FaultProxy::start(&upstream(BODY, chunked).await, Flavor::Registry)
                .await
                .unwrap();
            proxy.add_rule(Rule::new(
                "GET",
                "/limited",
                When::Nth(2),
                Fault::TooManyRequests {
                    retry_after_seconds: 3,
                },
            ));
            proxy.add_rule(Rule::new(
                "GET",
                "/flip",
                When::Every,
                Fault::FlipByte { offset: 5 },
            ));
            proxy.add_rule(Rule::new(
                "*",
                "/cut",
                When::Every,
                Fault::TruncateBody { after: 10 },
            ));
            proxy.add_rule(Rule::new(
                "GET",
                "/reset",
                When::Every,
                Fault::ResetBody { after: 10 },
            ));
            proxy.add_rule(Rule::new(
                "GET",
                "/rewrite",
                When::Every,
                Fault::RewriteBody(Rewrite::new(|b| b.to_ascii_uppercase())),
            ));
            let http = reqwest::Client::new();
            let get = |path: &str| http.get(format!("{}{path}", proxy.url())).send();

            let r = get("/limited").await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-path"], "/limited");
            assert_eq!(r.bytes().await.unwrap(), BODY);
            let r = get("/limited").await.unwrap();
            assert_eq!(r.status(), 429);
            assert_eq!(r.headers()["retry-after"], "3");
            assert_eq!(get("/limited").await.unwrap().status(), 200);

            let flipped = get("/flip").await.unwrap().bytes().await.unwrap();
            assert_eq!(flipped.len(), BODY.len());
            let diff: Vec<usize> = (0..BODY.len()).filter(|&i| flipped[i] != BODY[i]).collect();
            assert_eq!(diff, vec![5]);

            for path in ["/cut", "/reset"] {
                let broken = match get(path).await {
                    Ok(r) => r.bytes().await.is_err(),
                    Err(_) => true,
                };
                assert!(broken, "{path}: a broken body must be an error");
            }
            let up = get("/rewrite").await.unwrap().bytes().await.unwrap();
            assert_eq!(up, BODY.to_ascii_uppercase());

            let r = http
                .put(format!("{}/upload", proxy.url()))
                .body(vec![7u8; 200_000])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "a request body is forwarded");

            assert_eq!(proxy.requests(), 8);
            assert_eq!(proxy.faults_injected(), 5);
            assert_eq!(proxy.count("GET", "/limited"), 3);
            let log = proxy.log();
            assert_eq!(log[1].fault, Some("429"));
            assert_eq!(log[1].status, Some(429));
        }
    }

    #[tokio::test]
    async fn random_faults_follow_the_seed_and_respect_the_caps() {
        let run = |seed| async move {
            let proxy = FaultProxy::start(&upstream(BODY, false).await, Flavor::S3)
                .await
                .unwrap();
            proxy.set_random(Some(RandomFaults {
                seed,
                probability: 0.5,
                faults: vec![Fault::ServerError { status: 503 }],
                method: "*".into(),
                path_contains: "/".into(),
                max_faults: 6,
                max_in_a_row: 1,
            }));
            let http = reqwest::Client::new();
            let mut statuses = Vec::new();
            for _ in 0..20 {
                let r = http.get(format!("{}/k", proxy.url())).send().await.unwrap();
                if r.status() == 503 {
                    let body = r.text().await.unwrap();
                    assert!(body.contains("<Code>SlowDown</Code>"), "{body}");
                    statuses.push(503);
                } else {
                    statuses.push(r.status().as_u16());
                }
            }
            (statuses, proxy.faults_injected())
        };
        let (a, faults) = run(7).await;
        let (b, _) = run(7).await;
        assert_eq!(a, b, "same seed, same faults");
        assert!(faults > 0 && faults <= 6, "{faults}");
        assert!(
            a.windows(2).all(|w| !(w[0] == 503 && w[1] == 503)),
            "at most one fault in a row: {a:?}"
        );
    }
}
