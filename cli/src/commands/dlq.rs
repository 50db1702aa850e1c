//! `ecr-backup dlq ls`: what is in the dead-letter queue, and why.

use anyhow::{Context, Result};
use ecr_backup_shared::pipeline::queue::SqsQueue;
use ecr_backup_shared::pipeline::redrive;

use super::Global;
use crate::Outcome;

/// Dead-letter queue commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List dead-lettered messages with the error recorded for each (they stay in the queue).
    Ls(LsArgs),
}

/// Arguments of `dlq ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// URL of the dead-letter queue.
    #[arg(long, env = "ECR_BACKUP_DLQ_URL")]
    dlq: String,
    /// Show at most this many messages.
    #[arg(long, default_value_t = 100)]
    max: usize,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `dlq` subcommand.
pub async fn run(command: Command, global: Global) -> Result<Outcome> {
    match command {
        Command::Ls(args) => ls(args, global).await,
    }
}

async fn ls(args: LsArgs, global: Global) -> Result<Outcome> {
    let dlq = SqsQueue::new(SqsQueue::client_from_env().await, args.dlq.clone());
    let letters = redrive::peek(&dlq, args.max)
        .await
        .with_context(|| format!("reading {}", args.dlq))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&letters)?);
        return Ok(Outcome::Success);
    }
    if letters.is_empty() {
        if !global.quiet {
            outln!("{} is empty", args.dlq);
        }
        return Ok(Outcome::Success);
    }
    for l in &letters {
        outln!("{}  {}", l.message_id, l.summary);
        match (&l.error, l.receive_count) {
            (Some(e), Some(n)) => outln!("    failed {n} times, last: {e}"),
            (Some(e), None) => outln!("    error: {e}"),
            (None, _) => outln!("    no error recorded (moved by SQS after a crash or timeout; see the worker's logs)"),
        }
        if let Some(id) = l
            .original_message_id
            .as_ref()
            .filter(|id| **id != l.message_id)
        {
            outln!("    first sent as message {id}");
        }
        if let Some(first) = &l.first_received_at {
            outln!("    first received {first}");
        }
    }
    Ok(Outcome::Success)
}
