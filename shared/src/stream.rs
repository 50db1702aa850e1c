//! Byte streams: what the registry client, the store backends and the engines pass each
//! other, so no layer holds a whole blob in memory; and reading them verified against
//! their digest. It sits at the root, not in `copy`, because the store's backends verify
//! every blob they write with it, and the store may not use the engine.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::oci::digest::{Digest, DigestError, DigestVerifier};

/// A stream of bytes read from, or written into, a backend.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Turns bytes already in memory into a [`ByteStream`].
pub fn stream_of(bytes: Bytes) -> ByteStream {
    Box::pin(futures::stream::once(async move { Ok(bytes) }))
}

/// Why a verified read stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The underlying stream failed.
    #[error("reading the bytes")]
    Io(#[source] std::io::Error),
    /// The bytes do not match their digest or size.
    #[error("checking the bytes")]
    Digest(#[source] DigestError),
}

/// Passes a stream's chunks through while hashing them; the stream ends with an error
/// instead of `None` when the bytes, once all read, do not match their digest and size
/// (or as soon as more bytes arrive than announced). The one hash-while-reading loop:
/// store writes, `verify` and restores all read through it.
pub struct VerifyingStream {
    inner: ByteStream,
    verifier: Option<DigestVerifier>,
}

impl VerifyingStream {
    /// Wraps `inner`, whose bytes should hash to `digest` (and number `size`, if known).
    pub fn new(inner: ByteStream, digest: Digest, size: Option<u64>) -> VerifyingStream {
        VerifyingStream {
            inner,
            verifier: Some(DigestVerifier::new(digest, size)),
        }
    }
}

impl Stream for VerifyingStream {
    type Item = Result<Bytes, ReadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            let Some(verifier) = this.verifier.as_mut() else {
                return Poll::Ready(None);
            };
            let item = match std::task::ready!(this.inner.poll_next_unpin(cx)) {
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) => match verifier.update(&chunk) {
                    Ok(()) => return Poll::Ready(Some(Ok(chunk))),
                    Err(e) => Err(ReadError::Digest(e)),
                },
                Some(Err(e)) => Err(ReadError::Io(e)),
                None => match this.verifier.take().expect("checked above").finish() {
                    Ok(_) => return Poll::Ready(None),
                    Err(e) => Err(ReadError::Digest(e)),
                },
            };
            // After an error the stream is over.
            this.verifier = None;
            return Poll::Ready(Some(item));
        }
    }
}

/// The mismatch a [`VerifiedStream`] found, if any, for its owner to read after the
/// consumer (an HTTP client) saw only an I/O error.
pub type VerifyFailure = Arc<Mutex<Option<DigestError>>>;

/// A [`ByteStream`] of verified bytes for a consumer that must never receive the whole of
/// a corrupt blob (a registry push): it holds the last chunk back until the digest and
/// size matched, and fails with an I/O error instead.
pub struct VerifiedStream {
    inner: VerifyingStream,
    held: Option<Bytes>,
    failure: VerifyFailure,
}

impl VerifiedStream {
    /// Wraps `inner`; the second value receives the mismatch, if one is found.
    pub fn new(inner: ByteStream, digest: Digest, size: Option<u64>) -> (Self, VerifyFailure) {
        let failure = VerifyFailure::default();
        let stream = VerifiedStream {
            inner: VerifyingStream::new(inner, digest, size),
            held: None,
            failure: failure.clone(),
        };
        (stream, failure)
    }
}

impl Stream for VerifiedStream {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match std::task::ready!(self.inner.poll_next_unpin(cx)) {
                Some(Ok(chunk)) => {
                    if let Some(previous) = self.held.replace(chunk) {
                        return Poll::Ready(Some(Ok(previous)));
                    }
                }
                Some(Err(ReadError::Io(e))) => {
                    self.held = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Err(ReadError::Digest(e))) => {
                    self.held = None;
                    let message = e.to_string();
                    *self.failure.lock().expect("failure lock") = Some(e);
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        message,
                    ))));
                }
                None => return Poll::Ready(self.held.take().map(Ok)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn drain(stream: VerifiedStream) -> (Vec<u8>, Option<std::io::Error>) {
        let mut out = Vec::new();
        let mut stream = Box::pin(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    fn chunks(parts: &[&'static [u8]]) -> ByteStream {
        let items: Vec<std::io::Result<Bytes>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures::stream::iter(items))
    }

    #[tokio::test]
    async fn verified_stream_passes_good_bytes() {
        let digest = Digest::of(b"hello world");
        let (s, failure) =
            VerifiedStream::new(chunks(&[b"hello", b" ", b"world"]), digest, Some(11));
        let (out, err) = drain(s).await;
        assert_eq!(out, b"hello world");
        assert!(err.is_none());
        assert!(failure.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn verified_stream_never_releases_the_last_chunk_of_corrupt_bytes() {
        let digest = Digest::of(b"hello world");
        let (s, failure) = VerifiedStream::new(
            chunks(&[b"hello", b" ", b"World"]),
            digest.clone(),
            Some(11),
        );
        let (out, err) = drain(s).await;
        assert!(err.is_some());
        assert_eq!(out, b"hello ", "the corrupt tail must not pass");
        assert!(matches!(
            *failure.lock().unwrap(),
            Some(DigestError::Mismatch { .. })
        ));

        let (s, failure) = VerifiedStream::new(chunks(&[b"hello"]), digest, Some(11));
        let (out, err) = drain(s).await;
        assert!(err.is_some() && out.is_empty());
        assert!(matches!(
            *failure.lock().unwrap(),
            Some(DigestError::SizeMismatch { .. })
        ));
    }

    /// The plain verifying stream ends in an error, not `None`, on a bad tail.
    #[tokio::test]
    async fn verifying_stream_ends_in_an_error_on_a_mismatch() {
        let digest = Digest::of(b"hello world");
        let items: Vec<_> = VerifyingStream::new(chunks(&[b"hello", b" ", b"World"]), digest, None)
            .collect()
            .await;
        assert_eq!(items.len(), 4);
        assert!(matches!(
            items.last(),
            Some(Err(ReadError::Digest(DigestError::Mismatch { .. })))
        ));
    }
}
