//! What a Lambda binary tells the Lambda Runtime API outside its handler: a start-up
//! failure. The `lambda_runtime` crate reports failures of its own start-up, but not one
//! of the function's (a missing or malformed variable, a client that cannot be built), so
//! without this Lambda only sees the process exit, and the reason is in a log line at best.

use std::time::Duration;

/// The variable Lambda sets to the Runtime API's `host:port`.
const RUNTIME_API: &str = "AWS_LAMBDA_RUNTIME_API";

/// Reports `message` (the failure with its causes, on one line) to
/// `/runtime/init/error`, as Lambda documents for a runtime that cannot start, and logs
/// it. Returns once the report was sent or could not be; outside Lambda (no Runtime API
/// variable) it only logs.
pub async fn report_init_error(message: &str) {
    tracing::error!(error = %message, "start-up failed");
    let Ok(api) = std::env::var(RUNTIME_API) else {
        return;
    };
    let body = serde_json::json!({
        "errorMessage": message,
        "errorType": "Runtime.InitError",
        "stackTrace": [],
    });
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "could not report the start-up failure to the Runtime API");
            return;
        }
    };
    let result = client
        .post(format!("http://{api}/2018-06-01/runtime/init/error"))
        .header("Lambda-Runtime-Function-Error-Type", "Runtime.InitError")
        .json(&body)
        .send()
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e.without_url(), "could not report the start-up failure to the Runtime API");
    }
}
