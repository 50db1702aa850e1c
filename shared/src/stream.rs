//! Byte streams: what the registry client, the store backends and the engines pass
//! each other, so no layer holds a whole blob in memory.

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

/// A stream of bytes read from, or written into, a backend.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Turns bytes already in memory into a [`ByteStream`].
pub fn stream_of(bytes: Bytes) -> ByteStream {
    Box::pin(futures::stream::once(async move { Ok(bytes) }))
}
