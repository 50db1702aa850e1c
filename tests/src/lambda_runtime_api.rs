//! A local Lambda Runtime API that runs a function's real binary the way AWS Lambda runs a
//! `provided.al2023` function, so that the fan-out and worker binaries are tested as
//! deployed: their `main`, their configuration from the environment, the `lambda_runtime`
//! loop, their logs and their metrics.
//!
//! # What is emulated
//!
//! Each [`LambdaFunction`] is one execution environment (reserved concurrency 1). Its
//! process is started on the first invocation (a cold start) with the environment Lambda
//! sets (`AWS_LAMBDA_RUNTIME_API`, `AWS_LAMBDA_FUNCTION_NAME`, `..._VERSION`,
//! `..._MEMORY_SIZE`, `AWS_LAMBDA_LOG_GROUP_NAME`, `..._LOG_STREAM_NAME`, `AWS_REGION`,
//! temporary credentials, `_HANDLER`, `LAMBDA_TASK_ROOT`, `TZ`) and nothing inherited
//! from the test process, plus the function's own variables. The Runtime API it polls
//! answers:
//!
//! - `GET /2018-06-01/runtime/invocation/next`: blocks until an invocation is queued, then
//!   answers with the event and the `Lambda-Runtime-Aws-Request-Id`,
//!   `Lambda-Runtime-Deadline-Ms`, `Lambda-Runtime-Invoked-Function-Arn` and
//!   `Lambda-Runtime-Trace-Id` headers;
//! - `POST /2018-06-01/runtime/invocation/{id}/response` (202; a payload over 6 MB is a
//!   `Function.ResponseSizeTooLarge` error, as in Lambda);
//! - `POST /2018-06-01/runtime/invocation/{id}/error` (202);
//! - `POST /2018-06-01/runtime/init/error` (202; the environment is then torn down and
//!   the invocation fails with that error).
//!
//! As in Lambda, a process that exits before its first `next` fails the invocation with
//! `Runtime.ExitError`; one that exits or is killed during an invocation, or runs past its
//! deadline, is torn down and replaced by a new one (a new cold start) on the next
//! invocation. The init phase has Lambda's 10 s limit (or the function timeout if longer);
//! the function timeout counts from the moment the runtime picks the invocation up.
//!
//! Every environment gets its own Runtime API port, as every Lambda sandbox has its own
//! endpoint, so a long poll left behind by a killed process never takes an invocation
//! meant for its successor.
//!
//! # What is simplified
//!
//! No memory limit is enforced (the peak resident size is reported on `REPORT` lines),
//! there is no `/tmp` size limit, no freezing between invocations, no SnapStart, no
//! response streaming, no extensions API and no telemetry API. Platform lines (`START`,
//! `END`, `REPORT`, timeouts) are written to the captured log as Lambda writes them to
//! CloudWatch, without timestamps.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Lambda's limit on a synchronous invocation's event and on a function's response.
pub const MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;
/// The account the emulated functions live in (moto's default account).
pub const ACCOUNT_ID: &str = "123456789012";
const API_PREFIX: &str = "/2018-06-01/runtime";
/// Lambda's limit on an on-demand function's init phase.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a torn-down process's output may take to reach the log.
const DRAIN_OUTPUT: Duration = Duration::from_secs(2);

/// A function's configuration, as it would be deployed.
#[derive(Clone)]
pub struct FunctionConfig {
    /// Function name.
    pub name: String,
    /// The `bootstrap` executable.
    pub binary: PathBuf,
    /// Configured timeout.
    pub timeout: Duration,
    /// Configured memory, in MB (reported only).
    pub memory_mb: u32,
    /// `AWS_REGION`.
    pub region: String,
    /// `AWS_ENDPOINT_URL` (a local AWS server), if any.
    pub aws_endpoint: Option<String>,
    /// The execution role's temporary access key id.
    pub access_key_id: String,
    /// Its secret key.
    pub secret_access_key: String,
    /// Its session token.
    pub session_token: String,
    /// The function's own environment variables.
    pub env: Vec<(String, String)>,
}

impl fmt::Debug for FunctionConfig {
    // Credentials are never printed: test failure messages show configurations.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FunctionConfig")
            .field("name", &self.name)
            .field("binary", &self.binary)
            .field("timeout", &self.timeout)
            .field("memory_mb", &self.memory_mb)
            .field("region", &self.region)
            .field("aws_endpoint", &self.aws_endpoint)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl FunctionConfig {
    /// A function running `binary`, with a 30 s timeout, 512 MB, in us-east-1, and fresh
    /// random credentials (any credentials do for a local AWS server).
    pub fn new(name: impl Into<String>, binary: impl Into<PathBuf>) -> FunctionConfig {
        FunctionConfig {
            name: name.into(),
            binary: binary.into(),
            timeout: Duration::from_secs(30),
            memory_mb: 512,
            region: "us-east-1".into(),
            aws_endpoint: None,
            access_key_id: format!("ASIA{:016X}", rand::random::<u64>()),
            secret_access_key: format!(
                "{:032x}{:08x}",
                rand::random::<u128>(),
                rand::random::<u32>()
            ),
            session_token: format!("IQoJb3JpZ2luX2VjE{:032x}", rand::random::<u128>()),
            env: Vec::new(),
        }
    }

    /// Adds a function environment variable.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> FunctionConfig {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> FunctionConfig {
        self.timeout = timeout;
        self
    }

    /// Points the AWS SDK at a local server (`AWS_ENDPOINT_URL`).
    pub fn aws_endpoint(mut self, url: impl Into<String>) -> FunctionConfig {
        self.aws_endpoint = Some(url.into());
        self
    }

    /// The function's ARN.
    pub fn arn(&self) -> String {
        format!(
            "arn:aws:lambda:{}:{ACCOUNT_ID}:function:{}",
            self.region, self.name
        )
    }
}

/// How an invocation ended, as the Lambda Invoke API would tell it.
#[derive(Debug, Clone, PartialEq)]
pub enum InvocationResult {
    /// The function's response payload.
    Response(Value),
    /// A function error: the body the runtime posted to `/error` (`errorType`,
    /// `errorMessage`), an init error, or `Runtime.ExitError` for a process that exited
    /// before it asked for the invocation.
    Error(Value),
    /// The process died during the invocation (exited, crashed or was killed); why.
    Crashed(String),
    /// The invocation ran past its deadline; the process was killed.
    TimedOut,
}

impl InvocationResult {
    /// The response payload, if the function answered.
    pub fn response(&self) -> Option<&Value> {
        match self {
            InvocationResult::Response(v) => Some(v),
            _ => None,
        }
    }
}

/// Where a captured line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// The process's standard output.
    Stdout,
    /// Its standard error.
    Stderr,
    /// The emulator's own platform lines (`START`, `END`, `REPORT`, timeouts).
    Platform,
}

/// One captured log line.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// The execution environment it came from (1 for the first cold start, then 2...).
    pub instance: u32,
    /// Its stream.
    pub stream: LogStream,
    /// The line, without its line break.
    pub text: String,
}

/// Counters of what a function went through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionStats {
    /// Processes started.
    pub cold_starts: u32,
    /// Invocations.
    pub invocations: u32,
    /// Invocations answered with a response.
    pub responses: u32,
    /// Invocations answered with a function error (init failures included).
    pub errors: u32,
    /// Invocations during which the process died or was killed.
    pub crashes: u32,
    /// Invocations that ran past their deadline.
    pub timeouts: u32,
    /// Processes that never got to their first invocation.
    pub init_failures: u32,
    /// Processes killed on request ([`LambdaFunction::kill_on_log`], [`LambdaFunction::kill_now`]).
    pub kills: u32,
}

/// One function: its configuration, its current execution environment, and everything it
/// printed.
pub struct LambdaFunction {
    config: FunctionConfig,
    environment: tokio::sync::Mutex<Option<Environment>>,
    shared: Arc<Shared>,
    instances: AtomicU32,
}

#[derive(Default)]
struct Shared {
    logs: Mutex<Vec<LogLine>>,
    kill_triggers: Mutex<Vec<(String, Duration)>>,
    kill: Notify,
    stats: Mutex<FunctionStats>,
    init_errors: Mutex<Vec<Value>>,
}

impl Shared {
    fn push(&self, instance: u32, stream: LogStream, text: String) {
        self.logs.lock().unwrap().push(LogLine {
            instance,
            stream,
            text,
        });
    }

    fn stat(&self, f: impl FnOnce(&mut FunctionStats)) {
        f(&mut self.stats.lock().unwrap());
    }
}

/// A running process and its Runtime API.
struct Environment {
    instance: u32,
    child: Child,
    api: Arc<Api>,
    server: JoinHandle<()>,
    readers: Vec<JoinHandle<()>>,
}

impl Environment {
    /// Kills the process and waits for its output to be captured.
    async fn tear_down(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.server.abort();
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(DRAIN_OUTPUT, reader).await;
        }
    }

    fn peak_memory_mb(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb.div_ceil(1024))
    }
}

/// The Runtime API state of one environment.
struct Api {
    arn: String,
    queue: Mutex<VecDeque<Queued>>,
    queued: Notify,
    waiting: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    init_error: Mutex<Option<Value>>,
    init_failed: Notify,
}

struct Queued {
    request_id: String,
    trace_id: String,
    event: Bytes,
    timeout: Duration,
    picked: oneshot::Sender<()>,
}

enum Outcome {
    Response(Value),
    Error(Value),
}

enum Ended {
    Answered(Outcome),
    Exited(std::io::Result<ExitStatus>),
    InitError,
    Deadline,
    Killed,
}

impl LambdaFunction {
    /// A function; its process starts on the first invocation.
    pub fn new(config: FunctionConfig) -> LambdaFunction {
        LambdaFunction {
            config,
            environment: tokio::sync::Mutex::new(None),
            shared: Arc::default(),
            instances: AtomicU32::new(0),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &FunctionConfig {
        &self.config
    }

    /// Invokes the function synchronously with `event`, within `timeout`. Invocations of
    /// one function run one at a time, in one execution environment.
    pub async fn invoke(&self, event: &Value, timeout: Duration) -> InvocationResult {
        let event = Bytes::from(serde_json::to_vec(event).expect("a JSON value serializes"));
        if event.len() > MAX_PAYLOAD_BYTES {
            return InvocationResult::Error(json!({
                "errorType": "RequestEntityTooLargeException",
                "errorMessage": format!("{} byte payload is too large for the RequestResponse invocation type (limit {MAX_PAYLOAD_BYTES} bytes)", event.len()),
            }));
        }
        let mut slot = self.environment.lock().await;
        if let Some(environment) = slot.as_mut() {
            if !matches!(environment.child.try_wait(), Ok(None)) {
                slot.take().expect("checked").tear_down().await;
            }
        }
        if slot.is_none() {
            match self.start() {
                Ok(environment) => *slot = Some(environment),
                Err(e) => {
                    self.shared.stat(|s| {
                        s.invocations += 1;
                        s.errors += 1;
                        s.init_failures += 1;
                    });
                    return InvocationResult::Error(json!({
                        "errorType": "Runtime.InvalidEntrypoint",
                        "errorMessage": format!("cannot start {}: {e}", self.config.binary.display()),
                    }));
                }
            }
        }
        let environment = slot.as_mut().expect("started");
        self.shared.stat(|s| s.invocations += 1);

        let request_id = request_id();
        let (done_tx, mut done_rx) = oneshot::channel();
        let (picked_tx, mut picked_rx) = oneshot::channel();
        environment
            .api
            .waiting
            .lock()
            .unwrap()
            .insert(request_id.clone(), done_tx);
        environment.api.queue.lock().unwrap().push_back(Queued {
            request_id: request_id.clone(),
            trace_id: trace_id(),
            event,
            timeout,
            picked: picked_tx,
        });
        environment.api.queued.notify_one();
        let instance = environment.instance;
        self.platform(
            instance,
            format!("START RequestId: {request_id} Version: $LATEST"),
        );

        // Created before anything can fire it: notify_waiters reaches a Notified from its
        // creation on.
        let kill = self.shared.kill.notified();
        tokio::pin!(kill);
        let queued_at = Instant::now();
        let mut started_at = None;
        let mut deadline = queued_at + INIT_TIMEOUT.max(timeout);
        let ended = loop {
            tokio::select! {
                biased;
                answer = &mut done_rx => break match answer {
                    Ok(outcome) => Ended::Answered(outcome),
                    Err(_) => Ended::Killed,
                },
                _ = &mut picked_rx, if started_at.is_none() => {
                    let now = Instant::now();
                    started_at = Some(now);
                    deadline = now + timeout;
                }
                status = environment.child.wait() => break Ended::Exited(status),
                _ = environment.api.init_failed.notified() => break Ended::InitError,
                _ = &mut kill => break Ended::Killed,
                _ = tokio::time::sleep_until(deadline) => break Ended::Deadline,
            }
        };
        let duration = started_at.map_or(Duration::ZERO, |s| s.elapsed());
        let memory = environment.peak_memory_mb();

        let result = match ended {
            Ended::Answered(Outcome::Response(value)) => {
                self.shared.stat(|s| s.responses += 1);
                InvocationResult::Response(value)
            }
            Ended::Answered(Outcome::Error(value)) => {
                self.shared.stat(|s| s.errors += 1);
                InvocationResult::Error(value)
            }
            Ended::InitError => {
                let error = environment
                    .api
                    .init_error
                    .lock()
                    .unwrap()
                    .clone()
                    .unwrap_or_else(|| json!({"errorType": "Runtime.Unknown"}));
                self.shared.stat(|s| {
                    s.errors += 1;
                    s.init_failures += 1;
                });
                InvocationResult::Error(error)
            }
            Ended::Exited(status) if started_at.is_none() => {
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                let error = environment
                    .api
                    .init_error
                    .lock()
                    .unwrap()
                    .clone()
                    .unwrap_or_else(|| {
                        json!({
                            "errorType": "Runtime.ExitError",
                            "errorMessage": format!("RequestId: {request_id} Error: Runtime exited with error: {status}"),
                        })
                    });
                self.shared.stat(|s| {
                    s.errors += 1;
                    s.init_failures += 1;
                });
                InvocationResult::Error(error)
            }
            Ended::Exited(status) => {
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                self.shared.stat(|s| s.crashes += 1);
                self.platform(
                    instance,
                    format!("RequestId: {request_id} Error: Runtime exited with error: {status}"),
                );
                InvocationResult::Crashed(format!("runtime exited with error: {status}"))
            }
            Ended::Killed => {
                self.shared.stat(|s| {
                    s.crashes += 1;
                    s.kills += 1;
                });
                self.platform(
                    instance,
                    format!(
                        "RequestId: {request_id} Error: Runtime exited with error: signal: killed"
                    ),
                );
                InvocationResult::Crashed("killed".into())
            }
            Ended::Deadline if started_at.is_none() => {
                self.shared.stat(|s| {
                    s.timeouts += 1;
                    s.init_failures += 1;
                });
                self.platform(
                    instance,
                    format!(
                        "INIT_REPORT Init Duration: {} ms Phase: init Status: timeout",
                        queued_at.elapsed().as_millis()
                    ),
                );
                InvocationResult::TimedOut
            }
            Ended::Deadline => {
                self.shared.stat(|s| s.timeouts += 1);
                self.platform(
                    instance,
                    format!(
                        "RequestId: {request_id} Task timed out after {:.2} seconds",
                        timeout.as_secs_f64()
                    ),
                );
                InvocationResult::TimedOut
            }
        };
        self.platform(instance, format!("END RequestId: {request_id}"));
        self.platform(
            instance,
            format!(
                "REPORT RequestId: {request_id}\tDuration: {:.2} ms\tMemory Size: {} MB\tMax Memory Used: {} MB",
                duration.as_secs_f64() * 1000.0,
                self.config.memory_mb,
                memory.map_or_else(|| "?".into(), |m| m.to_string()),
            ),
        );
        if !matches!(result, InvocationResult::Response(_))
            && !matches!(&result, InvocationResult::Error(_) if started_at.is_some())
        {
            // Lambda discards an environment whose runtime died, failed to start or timed
            // out; a function error leaves it warm.
            slot.take().expect("present").tear_down().await;
        }
        result
    }

    /// Kills the process the first time a line containing `pattern` is printed during an
    /// invocation, `after` that line (a worker killed in the middle of its work).
    pub fn kill_on_log(&self, pattern: impl Into<String>, after: Duration) {
        self.shared
            .kill_triggers
            .lock()
            .unwrap()
            .push((pattern.into(), after));
    }

    /// Kills the process if an invocation is running.
    pub fn kill_now(&self) {
        self.shared.kill.notify_waiters();
    }

    /// Stops the current process, if any, and waits until its output is captured.
    pub async fn shutdown(&self) {
        if let Some(environment) = self.environment.lock().await.take() {
            environment.tear_down().await;
        }
    }

    /// Every line captured so far, from every process of this function.
    pub fn logs(&self) -> Vec<LogLine> {
        self.shared.logs.lock().unwrap().clone()
    }

    /// The captured output as text, one line per line, platform lines included.
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        for line in self.shared.logs.lock().unwrap().iter() {
            text.push_str(&line.text);
            text.push('\n');
        }
        text
    }

    /// The last `n` captured lines, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let logs = self.shared.logs.lock().unwrap();
        let start = logs.len().saturating_sub(n);
        logs[start..]
            .iter()
            .map(|l| {
                format!(
                    "[{} #{} {:?}] {}",
                    self.config.name, l.instance, l.stream, l.text
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The CloudWatch Embedded Metric Format documents printed on standard output.
    pub fn emf_documents(&self) -> Vec<Value> {
        self.shared
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.stream == LogStream::Stdout)
            .filter_map(|l| serde_json::from_str::<Value>(&l.text).ok())
            .filter(|v| v.get("_aws").is_some())
            .collect()
    }

    /// The first EMF document that has `metric`, waiting up to `timeout` for it: the
    /// function's stdout is read by another thread, so a line printed just before the
    /// response may arrive after it.
    pub async fn wait_for_emf(&self, metric: &str, timeout: Duration) -> Option<Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(doc) = self
                .emf_documents()
                .into_iter()
                .find(|d| d.get(metric).is_some())
            {
                return Some(doc);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> FunctionStats {
        self.shared.stats.lock().unwrap().clone()
    }

    /// Bodies posted to `/init/error`.
    pub fn init_errors(&self) -> Vec<Value> {
        self.shared.init_errors.lock().unwrap().clone()
    }

    fn platform(&self, instance: u32, text: String) {
        self.shared.push(instance, LogStream::Platform, text);
    }

    /// Starts a process with its own Runtime API.
    fn start(&self) -> std::io::Result<Environment> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let listener = TcpListener::from_std(listener)?;
        let instance = self.instances.fetch_add(1, Ordering::Relaxed) + 1;
        let api = Arc::new(Api {
            arn: self.config.arn(),
            queue: Mutex::default(),
            queued: Notify::new(),
            waiting: Mutex::default(),
            init_error: Mutex::default(),
            init_failed: Notify::new(),
        });
        let task_root = self
            .config
            .binary
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let mut command = Command::new(&self.config.binary);
        command
            .env_clear()
            .envs(self.lambda_environment(&address.to_string(), &task_root))
            .envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&task_root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        self.shared.stat(|s| s.cold_starts += 1);
        self.platform(
            instance,
            "INIT_START Runtime Version: provided:al2023 Runtime Version ARN: local".into(),
        );
        let server = tokio::spawn(serve(listener, api.clone(), self.shared.clone()));
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let readers = vec![
            tokio::spawn(capture(
                stdout,
                instance,
                LogStream::Stdout,
                self.shared.clone(),
            )),
            tokio::spawn(capture(
                stderr,
                instance,
                LogStream::Stderr,
                self.shared.clone(),
            )),
        ];
        Ok(Environment {
            instance,
            child,
            api,
            server,
            readers,
        })
    }

    fn lambda_environment(&self, api_address: &str, task_root: &Path) -> Vec<(String, String)> {
        let c = &self.config;
        let date = chrono::Utc::now().format("%Y/%m/%d");
        let mut env = vec![
            ("AWS_LAMBDA_RUNTIME_API", api_address.to_owned()),
            ("AWS_LAMBDA_FUNCTION_NAME", c.name.clone()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", c.memory_mb.to_string()),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", c.name),
            ),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME",
                format!("{date}/[$LATEST]{:032x}", rand::random::<u128>()),
            ),
            ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".into()),
            ("AWS_REGION", c.region.clone()),
            ("AWS_DEFAULT_REGION", c.region.clone()),
            ("AWS_ACCESS_KEY_ID", c.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", c.secret_access_key.clone()),
            ("AWS_SESSION_TOKEN", c.session_token.clone()),
            ("_HANDLER", "bootstrap".into()),
            ("LAMBDA_TASK_ROOT", task_root.display().to_string()),
            ("LAMBDA_RUNTIME_DIR", task_root.display().to_string()),
            ("LANG", "en_US.UTF-8".into()),
            ("TZ", ":UTC".into()),
            ("PATH", "/usr/local/bin:/usr/bin/:/bin:/opt/bin".into()),
        ];
        if let Some(endpoint) = &c.aws_endpoint {
            env.push(("AWS_ENDPOINT_URL", endpoint.clone()));
        }
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }
}

/// Copies a pipe into the log line by line, firing kill triggers.
async fn capture(
    pipe: impl AsyncRead + Unpin,
    instance: u32,
    stream: LogStream,
    shared: Arc<Shared>,
) {
    let mut reader = BufReader::new(pipe);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buffer)
            .trim_end_matches(['\n', '\r'])
            .to_owned();
        let fired = {
            let mut triggers = shared.kill_triggers.lock().unwrap();
            triggers
                .iter()
                .position(|(pattern, _)| text.contains(pattern.as_str()))
                .map(|i| triggers.remove(i).1)
        };
        shared.push(instance, stream, text);
        if let Some(after) = fired {
            let shared = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                shared.kill.notify_waiters();
            });
        }
    }
}

/// Serves one environment's Runtime API until aborted (which drops every connection).
async fn serve(listener: TcpListener, api: Arc<Api>, shared: Arc<Shared>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let api = api.clone();
        let shared = shared.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let api = api.clone();
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&api, &shared, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

fn accepted() -> Response<Full<Bytes>> {
    reply(StatusCode::ACCEPTED, json!({"status": "OK"}))
}

async fn route(api: &Api, shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let Some(rest) = path.strip_prefix(API_PREFIX) else {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"errorType": "UnknownEndpoint", "errorMessage": path}),
        );
    };
    let method = request.method().clone();
    if method == Method::GET && rest == "/invocation/next" {
        return next(api).await;
    }
    if method == Method::POST && rest == "/init/error" {
        let body = error_body(request).await;
        shared.init_errors.lock().unwrap().push(body.clone());
        *api.init_error.lock().unwrap() = Some(body);
        api.init_failed.notify_one();
        return accepted();
    }
    let invocation = rest
        .strip_prefix("/invocation/")
        .and_then(|r| r.split_once('/'));
    match (method, invocation) {
        (Method::POST, Some((id, "response"))) => {
            let body = match request.into_body().collect().await {
                Ok(body) => body.to_bytes(),
                Err(e) => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        json!({"errorType": "InvalidRequest", "errorMessage": e.to_string()}),
                    )
                }
            };
            let (outcome, status) = if body.len() > MAX_PAYLOAD_BYTES {
                (
                    Outcome::Error(json!({
                        "errorType": "Function.ResponseSizeTooLarge",
                        "errorMessage": format!("Response payload size ({} bytes) exceeded maximum allowed payload size ({MAX_PAYLOAD_BYTES} bytes).", body.len()),
                    })),
                    StatusCode::PAYLOAD_TOO_LARGE,
                )
            } else {
                let value = serde_json::from_slice(&body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
                (Outcome::Response(value), StatusCode::ACCEPTED)
            };
            complete(api, id, outcome, status)
        }
        (Method::POST, Some((id, "error"))) => {
            let body = error_body(request).await;
            complete(api, id, Outcome::Error(body), StatusCode::ACCEPTED)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"errorType": "UnknownEndpoint", "errorMessage": path}),
        ),
    }
}

fn complete(api: &Api, id: &str, outcome: Outcome, status: StatusCode) -> Response<Full<Bytes>> {
    match api.waiting.lock().unwrap().remove(id) {
        Some(done) => {
            let _ = done.send(outcome);
            if status == StatusCode::ACCEPTED {
                accepted()
            } else {
                reply(
                    status,
                    json!({"errorType": "RequestEntityTooLarge", "errorMessage": "response too large"}),
                )
            }
        }
        None => reply(
            StatusCode::BAD_REQUEST,
            json!({"errorType": "InvalidRequestID", "errorMessage": format!("no invocation {id} is waiting for an answer")}),
        ),
    }
}

/// The long poll: hands out the next queued invocation.
async fn next(api: &Api) -> Response<Full<Bytes>> {
    let queued = loop {
        // notify_one keeps a permit when nobody waits, so a queued invocation is never
        // missed between the check and the wait.
        if let Some(queued) = api.queue.lock().unwrap().pop_front() {
            break queued;
        }
        api.queued.notified().await;
    };
    let deadline = SystemTime::now() + queued.timeout;
    let deadline_ms = deadline
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    let _ = queued.picked.send(());
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .header("Lambda-Runtime-Aws-Request-Id", &queued.request_id)
        .header("Lambda-Runtime-Deadline-Ms", deadline_ms.to_string())
        .header("Lambda-Runtime-Invoked-Function-Arn", &api.arn)
        .header("Lambda-Runtime-Trace-Id", &queued.trace_id)
        .body(Full::new(queued.event))
        .expect("a valid response")
}

/// An error body as JSON, with the type from `Lambda-Runtime-Function-Error-Type` when
/// the body has none.
async fn error_body(request: Request<Incoming>) -> Value {
    let error_type = request
        .headers()
        .get("Lambda-Runtime-Function-Error-Type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut value = serde_json::from_slice::<Value>(&body)
        .unwrap_or_else(|_| json!({"errorMessage": String::from_utf8_lossy(&body)}));
    if let (Some(object), Some(error_type)) = (value.as_object_mut(), error_type) {
        object
            .entry("errorType")
            .or_insert_with(|| Value::String(error_type));
    }
    value
}

/// A request id in Lambda's format (a UUID).
fn request_id() -> String {
    let r: u128 = rand::random();
    let hex = format!("{r:032x}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// An X-Ray trace header as Lambda passes it.
fn trace_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    format!(
        "Root=1-{now:08x}-{:024x};Parent={:016x};Sampled=0",
        rand::random::<u128>() >> 32,
        rand::random::<u64>()
    )
}
