//! The gRPC codec every convoy.v1 client and server uses: prost encoding
//! with small per-stream buffers, because the hub holds one long-lived Sync
//! stream per agent and an idle stream should not pin 8 KiB buffers; bulk
//! streams (artifact chunks) keep tonic's 8 KiB, which downloads need.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial (and growth) size of each stream's encode and decode buffer.
/// tonic's default is 8 KiB; nearly every convoy.v1 message (acks,
/// heartbeats, statuses) is well under 1 KiB, and a bigger one (a snapshot,
/// an artifact chunk) grows the buffer as it is encoded, as with the default.
pub const STREAM_BUFFER_BYTES: usize = 1024;
/// Encoded bytes gathered before they are handed to HTTP/2 (tonic's default).
pub const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;
/// The buffer of streams of [`crate::v1::ArtifactChunk`] (tonic's default):
/// with 1 KiB, 1,000 concurrent 1 MiB downloads took 1.46x nginx instead of
/// 1.14x (docs/benchmarks.md, 2026-12-07).
pub const BULK_BUFFER_BYTES: usize = 8 * 1024;

/// `application/grpc+proto` via prost, with [`STREAM_BUFFER_BYTES`] buffers.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// The buffer settings of a stream of messages `M`.
fn settings<M: 'static>() -> BufferSettings {
    let bulk = std::any::TypeId::of::<M>() == std::any::TypeId::of::<crate::v1::ArtifactChunk>();
    BufferSettings::new(if bulk { BULK_BUFFER_BYTES } else { STREAM_BUFFER_BYTES }, YIELD_THRESHOLD_BYTES)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings::<T>())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings::<U>())
    }
}

#[cfg(test)]
mod tests {
    use tonic::codec::{Decoder as _, Encoder as _};

    use super::*;
    use crate::v1 as pb;

    /// The generated code uses this codec (a build.rs change that drops
    /// `codec_path` would compile but lose the small buffers), and a message
    /// far larger than the buffer still goes through it intact.
    #[tokio::test]
    async fn generated_services_use_the_lean_codec_and_big_messages_survive() {
        let generated = include_str!(concat!(env!("OUT_DIR"), "/convoy.v1.rs"));
        assert!(generated.contains("crate::codec::LeanCodec"));
        assert!(!generated.contains("tonic_prost::ProstCodec::default"));

        let small = format!("{:?}", BufferSettings::new(STREAM_BUFFER_BYTES, YIELD_THRESHOLD_BYTES));
        let bulk = format!("{:?}", BufferSettings::new(BULK_BUFFER_BYTES, YIELD_THRESHOLD_BYTES));
        let mut codec = LeanCodec::<pb::StatusReport, pb::StatusReport>::default();
        assert_eq!(format!("{:?}", codec.encoder().buffer_settings()), small);
        assert_eq!(format!("{:?}", codec.decoder().buffer_settings()), small);
        // A download: the server encodes chunks, the client decodes them.
        let mut server = LeanCodec::<pb::ArtifactChunk, pb::DownloadArtifactRequest>::default();
        assert_eq!(format!("{:?}", server.encoder().buffer_settings()), bulk);
        assert_eq!(format!("{:?}", server.decoder().buffer_settings()), small);
        let mut client = LeanCodec::<pb::DownloadArtifactRequest, pb::ArtifactChunk>::default();
        assert_eq!(format!("{:?}", client.decoder().buffer_settings()), bulk);

        // A 100 KiB message through a real server stream: encode with the
        // codec into gRPC frames, decode them back.
        use futures::StreamExt as _;
        let big = pb::StatusReport {
            seq: 7,
            status: Some(pb::BundleStatus { message: "x".repeat(100 * 1024), ..Default::default() }),
        };
        let source = futures::stream::iter(vec![Ok::<_, tonic::Status>(big.clone())]);
        let body = tonic::codec::EncodeBody::new_server(
            LeanCodec::<pb::StatusReport, pb::StatusReport>::default().encoder(),
            source,
            None,
            Default::default(),
            None,
        );
        let mut streaming = tonic::codec::Streaming::new_request(
            LeanCodec::<pb::StatusReport, pb::StatusReport>::default().decoder(),
            body,
            None,
            None,
        );
        let back = streaming.next().await.expect("one message").expect("decodes");
        assert_eq!(back, big);
        assert!(streaming.next().await.is_none());
    }
}
