//! Worker Lambda: copies the images named by SQS messages into the backup store.

use aws_lambda_events::event::sqs::SqsEvent;
use ecr_backup_worker::{handle, WorkerContext};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    ecr_backup_shared::memory::keep_freed_memory();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_current_span(true)
        .without_time()
        .init();
    let context = match WorkerContext::from_env().await {
        Ok(context) => context,
        Err(e) => {
            // Told to Lambda as an init error naming what is wrong (a variable, a client).
            ecr_backup_shared::pipeline::runtime_api::report_init_error(&format!("{e:#}")).await;
            return Err(e.into());
        }
    };
    let context = &context;
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<_, Error>(handle(context, event.payload).await)
    }))
    .await
}
