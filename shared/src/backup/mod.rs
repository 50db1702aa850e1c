//! A backup: the [`plan`]ner that says what the store lacks of a source, and the local
//! [`run`] that copies it. The CLI runs both in one process; the fan-out Lambda plans
//! with the same [`Planner`] and hands the copies to workers through a queue.
//!
//! Owns: deciding what to copy. May use: `copy`, `source`, `store`.

pub mod meter;
pub mod plan;
pub mod run;
pub mod settings;

use crate::source::SourceError;
use crate::store::StoreError;

pub use meter::Meter;
pub use plan::{selected_state, Baseline, Plan, Planner, RepositoryPlan};
pub use run::{run, BackupReport, FailedImage, RunOptions};

/// A run could not even start or finish its bookkeeping.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Enumerating the source failed.
    #[error("enumerating {source_name}")]
    Source {
        /// The registry.
        source_name: String,
        /// What failed.
        #[source]
        error: SourceError,
    },
    /// Reading or writing the store's records failed.
    #[error("updating the store")]
    Store(#[from] StoreError),
}
