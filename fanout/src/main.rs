//! Fan-out Lambda: run daily by EventBridge, enqueues the images the backup lacks.

use std::time::{Duration, SystemTime};

use ecr_backup_fanout::{handle, FanoutContext};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .without_time()
        .init();
    let context = match FanoutContext::from_env().await {
        Ok(context) => context,
        Err(e) => {
            // Told to Lambda as an init error naming what is wrong (a variable, a client).
            ecr_backup_shared::pipeline::runtime_api::report_init_error(&format!("{e:#}")).await;
            return Err(e.into());
        }
    };
    let context = &context;
    run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            let remaining = event
                .context
                .deadline()
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::from_secs(60));
            let report = handle(context, remaining).await?;
            Ok::<_, Error>(serde_json::to_value(report)?)
        },
    ))
    .await
}
