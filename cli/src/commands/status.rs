//! `ecr-backup status`: is the backup fresh, and when was it last proven? Reads the store
//! (last complete run, last verify, last drill), optionally the source (images not in
//! the store yet) and the queues, and exits 1 with the reasons on stderr when anything
//! is stale or failing, so cron and monitoring can call it.
//!
//! Push-event lag is the copy queue's CloudWatch metric `AWS/SQS
//! ApproximateAgeOfOldestMessage` (Maximum over the last 15 minutes): SQS itself keeps
//! no age of its oldest message, only counts, and receiving from the copy queue to look
//! would count as a delivery toward its dead-letter limit.

use anyhow::{Context, Result};
use chrono::{DateTime, Duration, Utc};
use ecr_backup_shared::filter::ImageFilter;
use ecr_backup_shared::pipeline::queue::SqsQueue;
use ecr_backup_shared::pipeline::queue_status::{self, OldestLetter, QueueDepth};
use ecr_backup_shared::source::Source;
use ecr_backup_shared::wayback::status::{self, SourceGap, StoreStatus, Thresholds};
use serde::Serialize;

use super::credentials::{self, CredentialFlags};
use super::Global;
use crate::Outcome;

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The backup store: a directory, or `s3://bucket/prefix`.
    #[arg(long, env = "ECR_BACKUP_STORE", default_value = "ecr-backup-store")]
    store: String,
    /// URL of the copy queue: its depth, and the push-event lag (CloudWatch).
    #[arg(long, env = "ECR_BACKUP_QUEUE_URL")]
    queue: Option<String>,
    /// URL of the dead-letter queue: any message in it is unhealthy.
    #[arg(long, env = "ECR_BACKUP_DLQ_URL")]
    dlq: Option<String>,
    /// Also list the source registry and name the images the store lacks.
    #[arg(long, value_name = "REGISTRY")]
    source: Option<String>,
    /// With --source: only repositories matching this glob (repeatable), as the backup
    /// selects them.
    #[arg(long = "repository", value_name = "GLOB", requires = "source")]
    repositories: Vec<String>,
    /// With --source: leave out repositories matching this glob (repeatable).
    #[arg(long = "exclude-repository", value_name = "GLOB", requires = "source")]
    exclude_repositories: Vec<String>,
    /// Reach the source's data plane at this URL instead.
    #[arg(long, value_name = "URL")]
    source_endpoint: Option<String>,
    /// Source credentials as `USER:PASSWORD` (ECR logs in by itself).
    #[arg(long, hide_env_values = true)]
    credentials: Option<String>,
    /// The last complete run may be at most this old (`26h`, `90m`, `2d`).
    #[arg(long, value_name = "AGE", default_value = "26h", value_parser = parse_age)]
    max_age: Duration,
    /// The last restore drill may be at most this old (default: not checked).
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    max_drill_age: Option<Duration>,
    /// The last verify may be at most this old (default: not checked).
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    max_verify_age: Option<Duration>,
    /// The push-event lag may be at most this (with --queue).
    #[arg(long, value_name = "AGE", default_value = "1h", value_parser = parse_age)]
    max_lag: Duration,
    /// Print the status as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `26h`, `90m`, `2d`, `45s` (a number and a unit).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit: use s, m, h or d (26h)"))?;
    let (number, unit) = text.split_at(split);
    let n: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    match unit {
        "s" => Ok(Duration::seconds(n)),
        "m" => Ok(Duration::minutes(n)),
        "h" => Ok(Duration::hours(n)),
        "d" => Ok(Duration::days(n)),
        _ => Err(format!(
            "{text:?}: unknown unit {unit:?} (use s, m, h or d)"
        )),
    }
}

/// The copy queue's side.
#[derive(Debug, Serialize)]
struct QueueStatus {
    #[serde(flatten)]
    depth: QueueDepth,
    /// Seconds, from CloudWatch; `None` when it has no datapoint.
    oldest_message_age_seconds: Option<f64>,
    /// Why the age could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    lag_error: Option<String>,
    /// Where the age comes from.
    lag_measured_by: &'static str,
}

/// The dead-letter queue's side.
#[derive(Debug, Serialize)]
struct DlqStatus {
    #[serde(flatten)]
    depth: QueueDepth,
    oldest: Option<OldestLetter>,
}

#[derive(Debug, Serialize)]
struct Status {
    healthy: bool,
    reasons: Vec<String>,
    checked_at: DateTime<Utc>,
    #[serde(flatten)]
    store: StoreStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<SourceGap>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<QueueStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dlq: Option<DlqStatus>,
}

/// Runs `status`.
pub async fn run(args: Args, global: Global) -> Result<Outcome> {
    let now = Utc::now();
    let store = super::open_store(&args.store).await?;
    let (store_status, listing) = status::store_status(&store, now)
        .await
        .with_context(|| format!("reading the status of {}", store.location()))?;
    let gap = match &args.source {
        Some(spec) => {
            let filter = ImageFilter::new(&args.repositories, &args.exclude_repositories, None)?;
            let creds = credentials::resolve(
                spec,
                &CredentialFlags {
                    user_password: args.credentials.as_deref().map(|c| (c, "--credentials")),
                    username: None,
                    password_stdin: false,
                    authfile: None,
                },
            )?;
            let source = Source::connect(spec, args.source_endpoint.as_deref(), creds)
                .await
                .with_context(|| format!("connecting to source registry {spec}"))?;
            Some(
                status::source_gap(&source, &listing, &filter)
                    .await
                    .with_context(|| format!("listing source registry {spec}"))?,
            )
        }
        None => None,
    };
    let thresholds = Thresholds {
        max_age: args.max_age,
        max_drill_age: args.max_drill_age,
        max_verify_age: args.max_verify_age,
    };
    let mut reasons = status::store_reasons(&store_status, gap.as_ref(), &thresholds, now);

    let sqs = if args.queue.is_some() || args.dlq.is_some() {
        Some(SqsQueue::client_from_env().await)
    } else {
        None
    };
    let queue = match (&args.queue, &sqs) {
        (Some(url), Some(client)) => {
            let q = SqsQueue::new(client.clone(), url.clone());
            let depth = queue_status::depth(&q)
                .await
                .with_context(|| format!("reading {url}"))?;
            // The lag is what CloudWatch says; when it cannot be read (no permission, an
            // endpoint that does not speak CloudWatch's protocol) it is unknown, said on
            // stderr, and not by itself a reason to fail.
            let (age, lag_error) = match oldest_message_age(url, now).await {
                Ok(age) => (age, None),
                Err(e) => {
                    let text = format!("{e:#}");
                    eprintln!("warning: could not read ApproximateAgeOfOldestMessage of {url} from CloudWatch: {text}");
                    (None, Some(text))
                }
            };
            if let Some(age) = age {
                if age > args.max_lag.num_seconds() as f64 {
                    reasons.push(format!(
                        "push-event lag: the oldest message in the copy queue is {:.0} s old (more than --max-lag {} s)",
                        age,
                        args.max_lag.num_seconds()
                    ));
                }
            }
            Some(QueueStatus {
                depth,
                oldest_message_age_seconds: age,
                lag_error,
                lag_measured_by: "CloudWatch AWS/SQS ApproximateAgeOfOldestMessage, Maximum over the last 15 minutes",
            })
        }
        _ => None,
    };
    let dlq = match (&args.dlq, &sqs) {
        (Some(url), Some(client)) => {
            let q = SqsQueue::new(client.clone(), url.clone());
            let depth = queue_status::depth(&q)
                .await
                .with_context(|| format!("reading {url}"))?;
            let oldest = if depth.visible + depth.in_flight > 0 {
                queue_status::oldest_dead_letter(&q)
                    .await
                    .with_context(|| format!("peeking at {url}"))?
            } else {
                None
            };
            if depth.visible + depth.in_flight + depth.delayed > 0 {
                let since = oldest
                    .as_ref()
                    .and_then(|o| o.sent_at)
                    .map(|t| format!(", the oldest since {}", t.to_rfc3339()))
                    .unwrap_or_default();
                reasons.push(format!(
                    "{} message(s) in the dead-letter queue{since} (ecr-backup dlq ls --dlq {url})",
                    depth.visible + depth.in_flight + depth.delayed
                ));
            }
            Some(DlqStatus { depth, oldest })
        }
        _ => None,
    };

    let status = Status {
        healthy: reasons.is_empty(),
        reasons,
        checked_at: now,
        store: store_status,
        source: gap,
        queue,
        dlq,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
    } else if !global.quiet {
        print_status(&status, now);
    }
    for reason in &status.reasons {
        eprintln!("unhealthy: {reason}");
    }
    Ok(if status.healthy {
        Outcome::Success
    } else {
        Outcome::Partial
    })
}

/// The copy queue's `ApproximateAgeOfOldestMessage` (AWS/SQS, by `QueueName`), the
/// Maximum of the last 15 minutes; `None` when CloudWatch has no datapoint.
async fn oldest_message_age(queue_url: &str, now: DateTime<Utc>) -> Result<Option<f64>> {
    let name = queue_url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let client = aws_sdk_cloudwatch::Client::new(&ecr_backup_shared::aws::sdk_config().await);
    let start = now - Duration::minutes(15);
    let out = client
        .get_metric_statistics()
        .namespace("AWS/SQS")
        .metric_name("ApproximateAgeOfOldestMessage")
        .dimensions(
            aws_sdk_cloudwatch::types::Dimension::builder()
                .name("QueueName")
                .value(name)
                .build(),
        )
        .start_time(aws_sdk_cloudwatch::primitives::DateTime::from(
            std::time::SystemTime::from(start),
        ))
        .end_time(aws_sdk_cloudwatch::primitives::DateTime::from(
            std::time::SystemTime::from(now + Duration::minutes(1)),
        ))
        .period(60)
        .statistics(aws_sdk_cloudwatch::types::Statistic::Maximum)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", aws_sdk_cloudwatch::error::DisplayErrorContext(&e)))?;
    Ok(out
        .datapoints()
        .iter()
        .filter_map(|d| d.maximum())
        .fold(None, |acc: Option<f64>, v| {
            Some(acc.map_or(v, |a| a.max(v)))
        }))
}

fn ago(now: DateTime<Utc>, t: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds().max(0);
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{:.1} h ago", s as f64 / 3600.0),
        _ => format!("{:.1} days ago", s as f64 / 86400.0),
    }
}

fn print_status(status: &Status, now: DateTime<Utc>) {
    let s = &status.store;
    outln!("Store {}", s.store);
    match &s.last_run {
        Some(r) => outln!(
            "  last complete run: {} ({}), {} images in {} repositories, {} not in the store",
            r.id,
            ago(now, r.taken_at),
            r.images,
            r.repositories,
            r.failures
        ),
        None => outln!("  last complete run: none"),
    }
    if let Some(g) = &status.source {
        outln!(
            "  source {}: {} images, {} not in the store yet",
            g.source,
            g.images_seen,
            g.missing
        );
    }
    match &s.last_verify {
        Some(v) => outln!(
            "  last verify: {} ({}), {}",
            v.id,
            ago(now, v.finished_at),
            if v.clean {
                "no problems".to_owned()
            } else {
                format!("{} problem(s)", v.problem_count)
            }
        ),
        None => outln!("  last verify: none recorded"),
    }
    match &s.last_drill {
        Some(d) => outln!(
            "  last restore drill: {} ({}), {} of {} images, {}",
            d.id,
            ago(now, d.finished_at),
            d.images.iter().filter(|i| i.ok).count(),
            d.images.len(),
            if d.passed { "passed" } else { "FAILED" }
        ),
        None => outln!("  last restore drill: none recorded"),
    }
    if let Some(q) = &status.queue {
        let lag = q
            .oldest_message_age_seconds
            .map(|a| format!("{a:.0} s"))
            .unwrap_or_else(|| "unknown (no CloudWatch datapoint in 15 min)".into());
        outln!(
            "  copy queue: {} waiting, {} in flight; push-event lag (oldest message): {lag}",
            q.depth.visible,
            q.depth.in_flight
        );
    }
    if let Some(d) = &status.dlq {
        let oldest = d
            .oldest
            .as_ref()
            .and_then(|o| o.sent_at)
            .map(|t| format!(", oldest {}", ago(now, t)))
            .unwrap_or_default();
        outln!(
            "  dead-letter queue: {} message(s){oldest}",
            d.depth.visible + d.depth.in_flight + d.depth.delayed
        );
    }
    outln!(
        "{}",
        if status.healthy {
            "HEALTHY"
        } else {
            "UNHEALTHY"
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_with_units() {
        assert_eq!(parse_age("26h").unwrap(), Duration::hours(26));
        assert_eq!(parse_age("90m").unwrap(), Duration::minutes(90));
        assert_eq!(parse_age("8d").unwrap(), Duration::days(8));
        for bad in ["", "h", "26", "26x", "-1h"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }
}
