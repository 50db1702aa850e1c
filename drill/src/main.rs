//! Restore drill Lambda: run weekly by EventBridge, restores a sample of the latest run
//! into a scratch prefix of the account's ECR, compares every digest and cleans up.

use ecr_backup_drill::{handle, DrillContext};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    ecr_backup_shared::memory::keep_freed_memory();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .without_time()
        .init();
    let context = match DrillContext::from_env().await {
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
            handle(context, &event.payload).await.map_err(Error::from)
        },
    ))
    .await
}
