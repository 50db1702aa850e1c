//! What a store costs: the prices (configuration, with documented defaults and the date
//! they were read) and the estimate of a month of storage for what a store holds, in its
//! S3 storage class and as AWS Backup warm storage, where every object smaller than
//! 128 KB is billed as 128 KB.

use serde::{Deserialize, Serialize};

use crate::metering::{RequestCounts, S3Requests};

/// AWS Backup bills every S3 object (and delete marker) smaller than this as this size.
pub const BACKUP_MIN_OBJECT_BYTES: u64 = 128 * 1024;

/// Bytes in a GB as AWS bills storage (GB-month of 2^30 bytes).
const GB: f64 = (1u64 << 30) as f64;

/// The environment variable holding price overrides (a JSON object of [`Prices`] fields).
pub const PRICES_ENV: &str = "ECR_BACKUP_PRICES";

/// Prices in US dollars, as configuration: every field may be overridden
/// (`ECR_BACKUP_PRICES='{"s3_storage_gb_month": 0.0125, "s3_storage_class": "STANDARD_IA"}'`
/// or the CLI's `--prices`). The defaults are us-east-1 list prices; `as_of` says when
/// they were read, so that a reader knows how old the figures are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prices {
    /// When these prices were read (`YYYY-MM-DD`); an override should set its own.
    pub as_of: String,
    /// The region they are for.
    pub region: String,
    /// The storage class the store's objects are kept in.
    pub s3_storage_class: String,
    /// That class's price per GB-month.
    pub s3_storage_gb_month: f64,
    /// S3 PUT, COPY, POST and LIST requests, per 1,000.
    pub s3_put_per_1000: f64,
    /// S3 GET, HEAD and other requests, per 1,000.
    pub s3_get_per_1000: f64,
    /// AWS Backup warm storage for S3 backups, per GB-month.
    pub backup_warm_gb_month: f64,
}

impl Default for Prices {
    fn default() -> Prices {
        Prices {
            as_of: "2026-12-03".into(),
            region: "us-east-1".into(),
            s3_storage_class: "STANDARD".into(),
            s3_storage_gb_month: 0.023,
            s3_put_per_1000: 0.005,
            s3_get_per_1000: 0.0004,
            backup_warm_gb_month: 0.05,
        }
    }
}

/// Prices that could not be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid prices {origin}: expected a JSON object of price fields (README, \"What it costs\")"
)]
pub struct PricesError {
    /// Where they came from (`--prices`, `ECR_BACKUP_PRICES`).
    pub origin: String,
    /// The parser's complaint.
    #[source]
    pub source: serde_json::Error,
}

impl Prices {
    /// The defaults with the fields of `json` (a JSON object) over them.
    pub fn with_overrides(json: &str, origin: &str) -> Result<Prices, PricesError> {
        serde_json::from_str(json).map_err(|source| PricesError {
            origin: origin.into(),
            source,
        })
    }

    /// The defaults, overridden by [`PRICES_ENV`] when it is set.
    pub fn from_env() -> Result<Prices, PricesError> {
        match std::env::var(PRICES_ENV) {
            Ok(json) if !json.trim().is_empty() => Prices::with_overrides(&json, PRICES_ENV),
            _ => Ok(Prices::default()),
        }
    }

    /// What `requests` cost.
    pub fn requests_usd(&self, requests: &S3Requests) -> f64 {
        (requests.put + requests.list) as f64 / 1000.0 * self.s3_put_per_1000
            + (requests.get + requests.head + requests.other) as f64 / 1000.0 * self.s3_get_per_1000
    }
}

/// Sizes of what a store holds, as storage is billed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoredBytes {
    /// Objects.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Their bytes as AWS Backup bills them (each at least [`BACKUP_MIN_OBJECT_BYTES`]).
    pub backup_billable_bytes: u64,
}

impl StoredBytes {
    /// Adds one object of `size` bytes.
    pub fn add(&mut self, size: u64) {
        self.objects += 1;
        self.bytes += size;
        self.backup_billable_bytes += size.max(BACKUP_MIN_OBJECT_BYTES);
    }
}

/// A month of storage of what a store holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StorageEstimate {
    /// What is stored.
    #[serde(flatten)]
    pub stored: StoredBytes,
    /// The S3 storage class priced.
    pub s3_storage_class: String,
    /// A month in that class, in US dollars.
    pub s3_monthly_usd: f64,
    /// A month of one AWS Backup recovery point of it in warm storage (objects under
    /// 128 KB billed as 128 KB), in US dollars. Each copy (the source vault, the locked
    /// vault in the backup account) is billed so; older versions kept by the bucket's
    /// versioning add to it.
    pub backup_warm_monthly_usd: f64,
    /// When the prices were read.
    pub prices_as_of: String,
    /// The region they are for.
    pub prices_region: String,
}

impl StorageEstimate {
    /// The estimate for `stored` at `prices`.
    pub fn new(stored: StoredBytes, prices: &Prices) -> StorageEstimate {
        StorageEstimate {
            stored,
            s3_storage_class: prices.s3_storage_class.clone(),
            s3_monthly_usd: round_cents(stored.bytes as f64 / GB * prices.s3_storage_gb_month),
            backup_warm_monthly_usd: round_cents(
                stored.backup_billable_bytes as f64 / GB * prices.backup_warm_gb_month,
            ),
            prices_as_of: prices.as_of.clone(),
            prices_region: prices.region.clone(),
        }
    }
}

/// Requests of one run, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Requests {
    /// S3 `PutObject`, multipart calls and copies.
    pub s3_put: u64,
    /// S3 `GetObject`.
    pub s3_get: u64,
    /// S3 listings.
    pub s3_list: u64,
    /// S3 `HeadObject`.
    pub s3_head: u64,
    /// Other S3 calls (multipart aborts).
    pub s3_other: u64,
    /// ECR API calls (`DescribeRepositories`, `DescribeImages`, tokens, …).
    pub ecr_api: u64,
    /// Registry HTTP requests (manifests, blobs, tag lists).
    pub registry: u64,
}

/// What one run (a backup, a batch, a fan-out) cost in writes and requests, and, where
/// it was measured, what the whole store now costs a month.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunCost {
    /// Bytes written to the store as new blobs.
    pub bytes_new: u64,
    /// Bytes the store had already (deduplicated): not transferred, not stored again.
    pub bytes_deduplicated: u64,
    /// Objects created or replaced in the store (blobs, manifests, records, index).
    pub objects_written: u64,
    /// Requests by kind.
    pub requests: Requests,
    /// What the S3 requests cost, in US dollars.
    pub s3_requests_usd: f64,
    /// The store after the run (absent when it was not measured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageEstimate>,
}

impl RunCost {
    /// From the counts of a run: the store's requests, the ECR API's, the registry's.
    pub fn new(
        store: &RequestCounts,
        ecr: &RequestCounts,
        registry_requests: u64,
        bytes_new: u64,
        bytes_deduplicated: u64,
        prices: &Prices,
    ) -> RunCost {
        let s3 = store.s3();
        RunCost {
            bytes_new,
            bytes_deduplicated,
            objects_written: store.objects_written,
            requests: Requests {
                s3_put: s3.put,
                s3_get: s3.get,
                s3_list: s3.list,
                s3_head: s3.head,
                s3_other: s3.other,
                ecr_api: ecr.total(),
                registry: registry_requests,
            },
            s3_requests_usd: (prices.requests_usd(&s3) * 1e6).round() / 1e6,
            storage: None,
        }
    }
}

/// To a hundredth of a cent: estimates are not invoices.
fn round_cents(usd: f64) -> f64 {
    (usd * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_objects_are_billed_as_128_kb_by_aws_backup() {
        let mut stored = StoredBytes::default();
        stored.add(100); // a record
        stored.add(1 << 30); // a 1 GiB layer
        assert_eq!(stored.objects, 2);
        assert_eq!(stored.bytes, 100 + (1 << 30));
        assert_eq!(stored.backup_billable_bytes, 128 * 1024 + (1 << 30));
        let estimate = StorageEstimate::new(stored, &Prices::default());
        assert_eq!(estimate.s3_monthly_usd, 0.023);
        // 1 GiB + 128 KiB at 0.05.
        assert_eq!(estimate.backup_warm_monthly_usd, 0.05);
    }

    #[test]
    fn ten_thousand_records_cost_more_in_a_vault_than_their_bytes() {
        let mut stored = StoredBytes::default();
        for _ in 0..10_000 {
            stored.add(400);
        }
        let estimate = StorageEstimate::new(stored, &Prices::default());
        // 4 MB of records, billed as 1.22 GiB by AWS Backup.
        assert_eq!(estimate.s3_monthly_usd, 0.0001);
        assert_eq!(estimate.backup_warm_monthly_usd, 0.061);
    }

    #[test]
    fn prices_are_overridden_field_by_field() {
        let p = Prices::with_overrides(
            r#"{"s3_storage_gb_month": 0.0125, "s3_storage_class": "STANDARD_IA", "as_of": "2027-01-01"}"#,
            "--prices",
        )
        .unwrap();
        assert_eq!(p.s3_storage_gb_month, 0.0125);
        assert_eq!(
            p.backup_warm_gb_month,
            Prices::default().backup_warm_gb_month
        );
        let err = Prices::with_overrides(r#"{"s3_storage": 1}"#, "--prices").unwrap_err();
        assert!(err.to_string().contains("--prices"));
    }

    #[test]
    fn requests_are_priced_by_class() {
        let p = Prices::default();
        let usd = p.requests_usd(&S3Requests {
            put: 1000,
            list: 1000,
            get: 10_000,
            head: 0,
            other: 0,
        });
        assert!((usd - (0.01 + 0.004)).abs() < 1e-12, "{usd}");
    }
}
