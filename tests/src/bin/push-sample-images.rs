//! Pushes a small sample corpus (multi-arch, nested names, shared layers) into a registry,
//! for the demo: `push-sample-images http://127.0.0.1:5000 [PREFIX]`.

use anyhow::{Context, Result};
use ecr_backup_shared::source::registry::Credentials;
use ecr_backup_tests::corpus::{push_corpus, CorpusOptions};
use ecr_backup_tests::servers::registry_client;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let registry = args
        .next()
        .context("usage: push-sample-images REGISTRY_URL [PREFIX]")?;
    let prefix = args.next().unwrap_or_else(|| "demo".into());
    let client = registry_client(&registry, Credentials::Anonymous);
    let mut options = CorpusOptions::new(prefix);
    options.big_layer_mib = 32;
    let corpus = push_corpus(&client, &options).await?;
    for ((repo, tag), digest) in corpus.tags() {
        let short: String = tag.as_str().chars().take(24).collect();
        let ellipsis = if tag.as_str().len() > 24 { "…" } else { "" };
        println!("pushed {repo}:{short}{ellipsis} {digest}");
    }
    Ok(())
}
