//! The S3 backend against a real S3 API server passes the same conformance suite as the
//! directory backend.

use ecr_backup_shared::store::run_conformance_suite;
use ecr_backup_tests::servers::TestServers;

use crate::common::{assert_no_open_multipart_uploads, s3_store};

#[tokio::test(flavor = "multi_thread")]
async fn s3_backend_passes_the_conformance_suite() {
    let servers = TestServers::from_env();
    let (client, store, bucket) = s3_store(&servers.moto, "conformance").await;
    run_conformance_suite(store.backend()).await;
    // Refused multipart uploads were aborted, not left to accumulate.
    assert_no_open_multipart_uploads(&client, &bucket).await;
}
