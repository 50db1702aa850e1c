//! `ecr-backup redrive`: move dead-lettered messages back to the copy queue.

use anyhow::{bail, Context, Result};
use ecr_backup_shared::pipeline::queue::SqsQueue;
use ecr_backup_shared::pipeline::redrive;

use super::Global;
use crate::Outcome;

/// Arguments of `redrive`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// URL of the dead-letter queue.
    #[arg(long, env = "ECR_BACKUP_DLQ_URL")]
    dlq: String,
    /// URL of the queue to move messages to (default: the queue whose dead-letter queue it is).
    #[arg(long, env = "ECR_BACKUP_QUEUE_URL")]
    target: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `redrive`.
pub async fn run(args: Args, global: Global) -> Result<Outcome> {
    let client = SqsQueue::client_from_env().await;
    let dlq = SqsQueue::new(client.clone(), args.dlq.clone());
    let target_url = match args.target {
        Some(url) => url,
        None => {
            let sources = client
                .list_dead_letter_source_queues()
                .queue_url(&args.dlq)
                .send()
                .await
                .with_context(|| format!("finding the queue that {} serves", args.dlq))?;
            match sources.queue_urls() {
                [one] => one.clone(),
                [] => bail!(
                    "no queue uses {} as its dead-letter queue; give --target",
                    args.dlq
                ),
                many => bail!(
                    "several queues use {} as dead-letter queue ({}); give --target",
                    args.dlq,
                    many.join(", ")
                ),
            }
        }
    };
    let target = SqsQueue::new(client, target_url.clone());
    let before = dlq.approximate_depth().await.unwrap_or(0);
    let bar = crate::progress::counter(global.show_progress(args.json), before, "messages moved");
    let report = redrive::redrive(&dlq, &target, &|moved| bar.set_position(moved))
        .await
        .with_context(|| format!("moving messages from {} to {target_url}", args.dlq))?;
    bar.finish_and_clear();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else if !global.quiet {
        outln!(
            "Moved {} messages from {} to {target_url} ({})",
            report.moved,
            args.dlq,
            report.method
        );
    }
    Ok(Outcome::Success)
}
