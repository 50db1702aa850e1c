//! One module per subcommand.

mod backup;
mod completions;
mod credentials;
mod dlq;
mod drill;
mod du;
mod export;
mod ls;
mod man;
mod prices;
mod redrive;
mod restore;
mod status;
mod verify;

use anyhow::Result;
use clap::Subcommand;
use ecr_backup_shared::store::{Store, StoreLocation};

use crate::Outcome;

/// Options every command sees.
#[derive(Debug, Clone, Copy)]
pub struct Global {
    /// `--quiet`.
    pub quiet: bool,
    /// `-v` count.
    pub verbose: u8,
}

impl Global {
    /// Progress bars only when neither quiet nor verbose.
    pub fn show_progress(&self, json: bool) -> bool {
        !self.quiet && self.verbose == 0 && !json
    }
}

/// Opens the store a user named and makes the first contact with it, so that an
/// unreachable or unusable store fails at once with one error saying what to set.
pub async fn open_store(text: &str) -> Result<Store> {
    let store = Store::open(&StoreLocation::parse(text)?).await;
    store.backend().first_contact().await?;
    Ok(store)
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Back up every image of a registry (ECR or any OCI registry) into a store.
    Backup(backup::Args),
    /// Move messages from the dead-letter queue back to the copy queue.
    Redrive(redrive::Args),
    /// Look at the dead-letter queue.
    #[command(subcommand)]
    Dlq(dlq::Command),
    /// Push images from a store back into a registry, digests unchanged.
    Restore(restore::Args),
    /// Write one image as an OCI layout, an OCI archive or a `docker load` archive.
    Export(export::Args),
    /// Check that a store is whole: records, blobs, sizes, and with --read-data digests.
    Verify(verify::Args),
    /// List what a store holds: repositories, a repository's tags, or snapshots.
    Ls(ls::Args),
    /// Prove a restore: a random sample of the latest run into a scratch prefix, every
    /// digest compared, cleaned up, recorded in the store.
    Drill(drill::Args),
    /// Is the backup fresh and proven? Last run, source lag, queues, last verify and
    /// drill; exits 1 with the reasons when not.
    Status(status::Args),
    /// What a store's objects take: unique and shared bytes per repository, by age, and
    /// the monthly storage cost.
    Du(du::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::Args),
    /// Print the manual page (roff), or write one per subcommand with --dir.
    Man(man::Args),
}

impl Command {
    /// True when the output is asked for as JSON (errors then go to stdout as JSON too).
    pub fn json(&self) -> bool {
        match self {
            Command::Backup(a) => a.json,
            Command::Redrive(a) => a.json,
            Command::Dlq(dlq::Command::Ls(a)) => a.json,
            Command::Restore(a) => a.json,
            Command::Export(a) => a.json,
            Command::Verify(a) => a.json,
            Command::Ls(a) => a.json,
            Command::Drill(a) => a.json,
            Command::Status(a) => a.json,
            Command::Du(a) => a.json,
            Command::Completions(_) | Command::Man(_) => false,
        }
    }
}

/// Runs a subcommand.
pub async fn run(command: Command, global: Global) -> Result<Outcome> {
    match command {
        Command::Backup(args) => backup::run(args, global).await,
        Command::Redrive(args) => redrive::run(args, global).await,
        Command::Dlq(command) => dlq::run(command, global).await,
        Command::Restore(args) => restore::run(args, global).await,
        Command::Export(args) => export::run(args, global).await,
        Command::Verify(args) => verify::run(args, global).await,
        Command::Ls(args) => ls::run(args, global).await,
        Command::Drill(args) => drill::run(args, global).await,
        Command::Status(args) => status::run(args, global).await,
        Command::Du(args) => du::run(args, global).await,
        Command::Completions(args) => completions::run(args, global).await,
        Command::Man(args) => man::run(args, global).await,
    }
}
