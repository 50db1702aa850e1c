//! `ecr-backup man`: the manual page (roff), generated from the command's own
//! definitions: on stdout (`ecr-backup man | man -l -`), or with `--dir` one page for the
//! command and one for each subcommand, to install under a `man1` directory.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::CommandFactory;

use super::Global;
use crate::Outcome;

/// Arguments of `man`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write `ecr-backup.1` and an `ecr-backup-SUBCOMMAND.1` page for each subcommand
    /// into this directory instead (e.g. `~/.local/share/man/man1`).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Prints the page, or writes the pages.
pub async fn run(args: Args, _global: Global) -> Result<Outcome> {
    let command = crate::Cli::command();
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("writing manual pages into {}", dir.display()))?;
            outln!("manual pages written to {}", dir.display());
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .context("rendering the manual page")?;
            outln!("{}", String::from_utf8(page)?.trim_end_matches('\n'));
        }
    }
    Ok(Outcome::Success)
}
