//! Shared AWS SDK configuration: standard settings from the environment, with a retry
//! policy suited to long batch work (the SDK retries throttling and 5xx itself).

use std::sync::OnceLock;

use aws_config::retry::RetryConfig;
use aws_config::BehaviorVersion;

/// Attempts per AWS call, including the first, before an error is returned.
pub const AWS_MAX_ATTEMPTS: u32 = 6;

/// A region given on the command line (`--region`), over the environment's.
static REGION: OnceLock<String> = OnceLock::new();

/// Uses `region` for every AWS client built from now on, as the AWS CLI's `--region`
/// does; the first call wins.
pub fn set_region(region: &str) {
    let _ = REGION.set(region.to_owned());
}

/// Loads the standard AWS configuration (region, credentials, `AWS_ENDPOINT_URL_*`).
pub async fn sdk_config() -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::adaptive().with_max_attempts(AWS_MAX_ATTEMPTS));
    if let Some(region) = REGION.get() {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    loader.load().await
}
