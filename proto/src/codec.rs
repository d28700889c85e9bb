//! The gRPC codec every convoy.v1 client and server uses: prost encoding
//! with small per-stream buffers, because the hub holds one long-lived Sync
//! stream per agent and an idle stream should not pin 8 KiB buffers.

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

/// `application/grpc+proto` via prost, with [`STREAM_BUFFER_BYTES`] buffers.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(STREAM_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
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
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
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

        let mut codec = LeanCodec::<pb::StatusReport, pb::StatusReport>::default();
        let enc = codec.encoder();
        assert_eq!(format!("{:?}", enc.buffer_settings()), format!("{:?}", settings()));
        let dec = codec.decoder();
        assert_eq!(format!("{:?}", dec.buffer_settings()), format!("{:?}", settings()));

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
