//! `ecr-backup completions SHELL`: a completion script for bash, zsh, fish, elvish or
//! PowerShell, generated from the command's own definitions (so it never drifts).

use anyhow::Result;
use clap::CommandFactory;
use clap_complete::Shell;

use super::Global;
use crate::Outcome;

/// Arguments of `completions`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Install, for example:\n  \
    ecr-backup completions bash > ~/.local/share/bash-completion/completions/ecr-backup\n  \
    ecr-backup completions zsh > ~/.zfunc/_ecr-backup   # with fpath+=~/.zfunc before compinit\n  \
    ecr-backup completions fish > ~/.config/fish/completions/ecr-backup.fish")]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Prints the script on stdout.
pub async fn run(args: Args, _global: Global) -> Result<Outcome> {
    let mut command = crate::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "ecr-backup", &mut script);
    let text = String::from_utf8(script)?;
    outln!("{}", text.trim_end_matches('\n'));
    Ok(Outcome::Success)
}
