//! The one HMAC-SHA256 signer and verifier, in the `sha256=<hex>` form that
//! GitHub webhooks, the generic webhook receiver and `generic-hmac` alert
//! providers use. Verification is constant-time. Pure computation, no I/O.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The prefix of a signature header value.
pub const PREFIX: &str = "sha256=";

fn mac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length")
}

/// The raw HMAC-SHA256 of `body` with `key`.
pub fn digest(key: &[u8], body: &[u8]) -> [u8; 32] {
    let mut m = mac(key);
    m.update(body);
    m.finalize().into_bytes().into()
}

/// `sha256=<lowercase hex HMAC-SHA256(key, body)>`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    format!("{PREFIX}{}", hex::encode(digest(key, body)))
}

/// Whether `header` is `sha256=<hex>` of a valid HMAC of `body` with `key`
/// (surrounding whitespace ignored; the comparison is constant-time).
pub fn verify(key: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix(PREFIX) else { return false };
    let Ok(sig) = hex::decode(hex_sig) else { return false };
    let mut m = mac(key);
    m.update(body);
    m.verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_documented_vector() {
        // docs.github.com "Validating webhook deliveries".
        let sig = sign(b"It's a Secret to Everybody", b"Hello, World!");
        assert_eq!(sig, "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17");
        assert!(verify(b"It's a Secret to Everybody", b"Hello, World!", &sig));
        assert!(verify(b"It's a Secret to Everybody", b"Hello, World!", &format!(" {sig}\n")));
    }

    #[test]
    fn rfc4231_case_2() {
        assert_eq!(
            hex::encode(digest(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn refuses_wrong_key_body_prefix_or_hex() {
        let sig = sign(b"k", b"body");
        assert!(!verify(b"other", b"body", &sig));
        assert!(!verify(b"k", b"bodY", &sig));
        assert!(!verify(b"k", b"body", sig.trim_start_matches(PREFIX)));
        assert!(!verify(b"k", b"body", "sha256=zz"));
        assert!(!verify(b"k", b"body", &sig[..sig.len() - 2]));
        assert!(!verify(b"k", b"body", ""));
    }
}
