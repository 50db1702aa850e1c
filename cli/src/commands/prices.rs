//! `--prices`: the prices the cost figures use, over the documented defaults.

use anyhow::{Context, Result};
use ecr_backup_shared::cost::{Prices, StorageEstimate};

use crate::progress::human_bytes;

/// The flag, shared by the commands that print cost figures.
#[derive(Debug, Clone, clap::Args)]
pub struct PriceFlags {
    /// Prices for the cost estimate, as a JSON object of fields to override (or
    /// `@FILE`): `s3_storage_class`, `s3_storage_gb_month`, `s3_put_per_1000`,
    /// `s3_get_per_1000`, `backup_warm_gb_month`, `region`, `as_of`. Defaults: us-east-1
    /// list prices (see the README).
    #[arg(long, env = "ECR_BACKUP_PRICES", value_name = "JSON")]
    prices: Option<String>,
}

impl PriceFlags {
    /// The prices to use.
    pub fn prices(&self) -> Result<Prices> {
        let Some(text) = &self.prices else {
            return Ok(Prices::default());
        };
        let json = match text.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the prices in {path}"))?,
            None => text.clone(),
        };
        Ok(Prices::with_overrides(&json, "given with --prices")?)
    }
}

/// `1,234 objects, 1.2 GiB: about $0.03 a month in S3 STANDARD, $0.06 a month for each
/// AWS Backup copy (…)`.
pub fn storage_line(estimate: &StorageEstimate) -> String {
    format!(
        "{} objects, {}: about ${:.2} a month in S3 {}, ${:.2} a month for each AWS Backup copy (warm storage, {} billed) at {} prices of {}",
        estimate.stored.objects,
        human_bytes(estimate.stored.bytes),
        estimate.s3_monthly_usd,
        estimate.s3_storage_class,
        estimate.backup_warm_monthly_usd,
        human_bytes(estimate.stored.backup_billable_bytes),
        estimate.prices_region,
        estimate.prices_as_of
    )
}
