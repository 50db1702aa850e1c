//! Shared AWS SDK configuration: standard settings from the environment, with a retry
//! policy suited to long batch work (the SDK retries throttling and 5xx itself).

use aws_config::retry::RetryConfig;
use aws_config::BehaviorVersion;

/// Attempts per AWS call, including the first, before an error is returned.
pub const AWS_MAX_ATTEMPTS: u32 = 6;

/// Loads the standard AWS configuration (region, credentials, `AWS_ENDPOINT_URL_*`).
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::adaptive().with_max_attempts(AWS_MAX_ATTEMPTS))
        .load()
        .await
}
