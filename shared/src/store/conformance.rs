//! One suite of contract checks that every [`Backend`] must pass.

use bytes::Bytes;
use futures::stream;

use futures::TryStreamExt;

use super::{stream_of, Backend, ByteStream, StoreError, WriteOutcome};
use crate::oci::digest::Digest;

/// Runs the contract checks against an empty backend; panics with a message on a breach.
pub async fn run_conformance_suite(backend: &dyn Backend) {
    let data = Bytes::from(vec![7u8; 3 * 1024 * 1024 + 17]);
    let digest = Digest::of(&data);
    let key = format!("blobs/sha256/{}", digest.hex());

    assert_eq!(
        backend.stat(&key).await.unwrap(),
        None,
        "stat of a missing key"
    );
    assert!(
        backend.read(&key).await.unwrap().is_none(),
        "read of a missing key"
    );
    assert!(
        matches!(backend.open(&key).await, Err(StoreError::NotFound { .. })),
        "open of a missing key must be NotFound"
    );

    // A stream that lies about its content is refused and leaves nothing visible.
    let mut flipped = data.to_vec();
    flipped[1000] ^= 1;
    let err = backend
        .write_verified(
            &key,
            &digest,
            Some(data.len() as u64),
            chunked(flipped.into()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Verify { .. }),
        "flipped byte: {err}"
    );
    assert_eq!(
        backend.stat(&key).await.unwrap(),
        None,
        "refused blob is visible"
    );

    // Truncated: refused too.
    let err = backend
        .write_verified(
            &key,
            &digest,
            Some(data.len() as u64),
            chunked(data.slice(..1000)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Verify { .. }), "truncated: {err}");

    // A stream that breaks in the middle is refused.
    let broken: ByteStream = Box::pin(stream::iter(vec![
        Ok(data.slice(..100)),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        )),
    ]));
    let err = backend
        .write_verified(&key, &digest, None, broken)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Source { .. }),
        "broken stream: {err}"
    );
    assert_eq!(backend.stat(&key).await.unwrap(), None);
    assert!(
        backend.list("blobs/").await.unwrap().is_empty(),
        "partial blob listed"
    );

    // The real bytes are accepted once, and a second write is a no-op.
    let outcome = backend
        .write_verified(
            &key,
            &digest,
            Some(data.len() as u64),
            chunked(data.clone()),
        )
        .await
        .unwrap();
    assert_eq!(outcome, WriteOutcome::Written);
    assert_eq!(backend.stat(&key).await.unwrap(), Some(data.len() as u64));
    let outcome = backend
        .write_verified(&key, &digest, None, chunked(data.clone()))
        .await
        .unwrap();
    assert_eq!(outcome, WriteOutcome::AlreadyExists);
    let read_back = collect(backend.open(&key).await.unwrap()).await.unwrap();
    assert!(read_back == data, "blob read back differs");

    // A blob of several S3 parts, not a multiple of the part size.
    let large = Bytes::from(
        (0..(2 * super::s3::PART_SIZE + 12345))
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let large_digest = Digest::of(&large);
    let large_key = format!("blobs/sha256/{}", large_digest.hex());
    let mut corrupt = large.to_vec();
    *corrupt.last_mut().unwrap() ^= 1;
    let err = backend
        .write_verified(
            &large_key,
            &large_digest,
            Some(large.len() as u64),
            chunked(corrupt.into()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Verify { .. }),
        "corrupt last byte of a multipart blob: {err}"
    );
    assert_eq!(
        backend.stat(&large_key).await.unwrap(),
        None,
        "refused multipart blob is visible"
    );
    let outcome = backend
        .write_verified(
            &large_key,
            &large_digest,
            Some(large.len() as u64),
            chunked(large.clone()),
        )
        .await
        .unwrap();
    assert_eq!(outcome, WriteOutcome::Written, "multipart blob");
    let read_back = collect(backend.open(&large_key).await.unwrap())
        .await
        .unwrap();
    assert!(read_back == large, "multipart blob read back differs");

    // Small blob (single request path on S3).
    let small = Bytes::from_static(b"{}");
    let small_key = format!("blobs/sha256/{}", Digest::of(&small).hex());
    backend
        .write_verified(
            &small_key,
            &Digest::of(&small),
            Some(2),
            stream_of(small.clone()),
        )
        .await
        .unwrap();
    assert_eq!(backend.read(&small_key).await.unwrap(), Some(small));

    // Records replace atomically.
    backend
        .write("repositories/a/_tags/t/x.json", Bytes::from_static(b"one"))
        .await
        .unwrap();
    backend
        .write("repositories/a/_tags/t/x.json", Bytes::from_static(b"two"))
        .await
        .unwrap();
    assert_eq!(
        backend
            .read("repositories/a/_tags/t/x.json")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"two"[..])
    );
    backend
        .write("repositories/ab/_tags/u/y.json", Bytes::from_static(b"3"))
        .await
        .unwrap();

    // Listing is by key prefix, recursive, and never shows temporary files.
    let mut keys: Vec<String> = backend
        .list("repositories/a/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    keys.sort();
    assert_eq!(keys, vec!["repositories/a/_tags/t/x.json".to_string()]);
    let all = backend.list("").await.unwrap();
    assert_eq!(all.len(), 5, "listing of everything: {all:?}");
    assert!(all.iter().all(|o| o.size > 0));

    create_only_races(backend).await;
}

/// Two writers of one key at once, with different bytes, many times: exactly one wins,
/// the other is told `AlreadyExists`, and the winner's bytes are what stays. A store that
/// checks, then renames, lets the loser replace the winner's object.
async fn create_only_races(backend: &dyn Backend) {
    const ROUNDS: usize = 40;
    for round in 0..ROUNDS {
        let key = format!("snapshots/race-{round}.json");
        let write = |n: u8| {
            let bytes = Bytes::from(vec![n; 64 * 1024 + usize::from(n)]);
            let digest = Digest::of(&bytes);
            let key = key.clone();
            async move {
                let outcome = backend
                    .write_verified(
                        &key,
                        &digest,
                        Some(bytes.len() as u64),
                        chunked(bytes.clone()),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("racing write of {key}: {e}"));
                (outcome, bytes)
            }
        };
        let ((a, a_bytes), (b, b_bytes)) = futures::join!(write(1), write(2));
        let winner = match (a, b) {
            (WriteOutcome::Written, WriteOutcome::AlreadyExists) => a_bytes,
            (WriteOutcome::AlreadyExists, WriteOutcome::Written) => b_bytes,
            other => panic!("round {round}: two racing create-only writes of {key} returned {other:?}; exactly one must win"),
        };
        let stored = backend
            .read(&key)
            .await
            .unwrap()
            .expect("the winner's object");
        assert!(
            stored == winner,
            "round {round}: {key} holds the loser's bytes, not the winner's"
        );
    }
}

fn chunked(bytes: Bytes) -> ByteStream {
    let chunks: Vec<_> = (0..bytes.len())
        .step_by(64 * 1024)
        .map(|i| Ok(bytes.slice(i..(i + 64 * 1024).min(bytes.len()))))
        .collect();
    Box::pin(stream::iter(chunks))
}

/// Reads a whole stream into memory (the suite's objects are small).
async fn collect(stream: ByteStream) -> std::io::Result<Vec<u8>> {
    stream
        .try_fold(Vec::new(), |mut acc, chunk| async move {
            acc.extend_from_slice(&chunk);
            Ok(acc)
        })
        .await
}
