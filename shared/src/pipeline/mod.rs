//! The Lambda pipeline: the daily [`fanout`] enumerates the source and sends one queue
//! [`message`] per image the store lacks; the [`worker`] copies one image per message
//! (and continues long fan-outs); [`redrive`] moves dead letters back. [`queue`] is SQS
//! ([`queue_status`]: what `ecr-backup status` reads of it), [`metrics`] the CloudWatch
//! embedded metrics the Lambdas print, [`config`] their environment, [`runtime_api`] the
//! one Runtime API detail the binaries need.
//!
//! Owns: message formats, delivery and acknowledgement decisions. May use: `backup` (the
//! planner), `copy`, `source`, `store`. Nothing below it uses it.

pub mod config;
pub mod fanout;
pub mod message;
pub mod metrics;
pub mod queue;
pub mod queue_status;
pub mod redrive;
pub mod runtime_api;
pub mod worker;
