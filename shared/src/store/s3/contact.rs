//! The first contact with an S3 store: before a command spends the SDK's full retry
//! budget (about 20 s against an address nobody answers on), check that a region is set
//! and send one `HeadObject` with a short budget, and turn each way this can fail (no
//! credentials found, nothing listening, access refused) into one error that names the
//! store and what to set. Credentials are resolved by the client itself for that request,
//! so a client built with its own provider is judged by it.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::error::SdkError;

use super::S3Backend;
use crate::metering::innermost_message;
use crate::store::{layout, Backend, StoreError};

/// Attempts of the first request, including the first (waits of at most a second).
const FIRST_CONTACT_ATTEMPTS: u32 = 4;
/// How long a connection to the endpoint may take to open on first contact.
const FIRST_CONTACT_CONNECT: Duration = Duration::from_secs(2);

/// Why a store could not be used at all; each says what to set or check.
#[derive(Debug, thiserror::Error)]
pub enum ContactError {
    /// No region is configured.
    #[error("no AWS region for store {location}: set AWS_REGION (or a profile's region with AWS_PROFILE), or pass --region")]
    NoRegion {
        /// The store.
        location: String,
    },
    /// No credentials were found anywhere the SDK looks.
    #[error("no AWS credentials for store {location}: set AWS_PROFILE (a profile in ~/.aws/config, e.g. after `aws sso login`) or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where a role provides them")]
    NoCredentials {
        /// The store.
        location: String,
    },
    /// Credentials are configured but could not be loaded.
    #[error("loading AWS credentials for store {location} failed: {reason} (check AWS_PROFILE and ~/.aws)")]
    CredentialsFailed {
        /// The store.
        location: String,
        /// The provider's innermost complaint.
        reason: String,
    },
    /// Nothing answered at the endpoint.
    #[error("cannot reach store {location} at {endpoint}: {reason}")]
    Unreachable {
        /// The store.
        location: String,
        /// The endpoint tried.
        endpoint: String,
        /// The innermost error (`Connection refused`, a timeout).
        reason: String,
    },
    /// The endpoint refused the credentials or the request.
    #[error("store {location} refused access (HTTP {status}): check the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID) and the bucket's policy")]
    Refused {
        /// The store.
        location: String,
        /// 401 or 403.
        status: u16,
    },
}

/// Where requests go, for messages.
fn endpoint(region: &str) -> String {
    std::env::var("AWS_ENDPOINT_URL_S3")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|_| format!("S3 in {region}"))
}

/// The credential chain's error among the causes of `error`, if it is one.
fn credentials_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a CredentialsError> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<CredentialsError>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// See the module's documentation.
pub(super) async fn first_contact(backend: &S3Backend) -> Result<(), StoreError> {
    let location = backend.location();
    let config = backend.client.config();
    let Some(region) = config.region().map(|r| r.to_string()) else {
        return Err(ContactError::NoRegion { location }.into());
    };
    let short_budget = aws_sdk_s3::config::Builder::default()
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(FIRST_CONTACT_ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(200))
                .with_max_backoff(Duration::from_secs(1)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(FIRST_CONTACT_CONNECT)
                .build(),
        );
    let result = backend
        .client
        .head_object()
        .bucket(&backend.location.bucket)
        .key(backend.full_key(layout::OCI_LAYOUT))
        .customize()
        .config_override(short_budget)
        .send()
        .await;
    let error = match result {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    // The client resolves credentials before it sends anything: their absence comes back
    // as the credential chain's own typed error, somewhere in the error's causes.
    if let Some(credentials) = credentials_error(&error) {
        return Err(match credentials {
            CredentialsError::CredentialsNotLoaded(_) => ContactError::NoCredentials { location },
            other => ContactError::CredentialsFailed {
                location,
                reason: innermost_message(other),
            },
        }
        .into());
    }
    let unreachable = |reason: String| ContactError::Unreachable {
        location: location.clone(),
        endpoint: endpoint(&region),
        reason,
    };
    Err(match &error {
        SdkError::DispatchFailure(failure) if failure.is_io() || failure.is_timeout() => {
            unreachable(innermost_message(&error))
        }
        SdkError::TimeoutError(_) => unreachable("no answer in time".into()),
        _ => match error.raw_response().map(|r| r.status().as_u16()) {
            // No store there yet, or no bucket: the command says which in its own words
            // (`backup` creates the store; readers say it is not a store).
            Some(404) => return Ok(()),
            Some(status @ (401 | 403)) => ContactError::Refused { location, status },
            // Anything else is left to the command's own requests and their full budget.
            _ => return Ok(()),
        },
    }
    .into())
}
