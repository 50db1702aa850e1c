//! One module per subcommand.

mod backup;

use anyhow::Result;
use clap::Subcommand;

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

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Back up every image of a registry (ECR or any OCI registry) into a store.
    Backup(backup::Args),
}

/// Runs a subcommand.
pub async fn run(command: Command, global: Global) -> Result<Outcome> {
    match command {
        Command::Backup(args) => backup::run(args, global).await,
    }
}
