//! Property tests of webhook authentication over hostile requests (issue 12,
//! "Fuzzing"): arbitrary bodies and headers never panic and are never taken
//! for authentic, and a valid signature stops verifying after any change to
//! the body, the signature, the secret or the expected type. Bounded in CI by
//! `PROPTEST_CASES` (64 unless set); docs/fuzzing.md has the longer command.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use convoy_sources::webhook::{
    GENERIC_SIGNATURE, GENERIC_TIMESTAMP, GITHUB_SIGNATURE, GITLAB_TOKEN, authentic, authentic_at, sign,
    sign_generic,
};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn kind() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("github".to_string())),
        Just(Some("gitlab".to_string())),
        Just(Some("generic".to_string())),
        "[a-z]{0,8}".prop_map(Some),
    ]
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(GITHUB_SIGNATURE.to_string()),
        Just(GITLAB_TOKEN.to_string()),
        Just(GENERIC_SIGNATURE.to_string()),
        Just("x-github-event".to_string()),
        "x-[a-z-]{1,20}",
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80),
        "sha256=[0-9a-fA-F]{0,70}".prop_map(String::into_bytes),
        "sha256= ?[0-9a-f]{64} ?".prop_map(String::into_bytes),
        "[ -~]{0,40}".prop_map(String::into_bytes),
    ]
}

fn headers(pairs: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        // Bytes no HTTP stack would deliver as a header value are skipped.
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_bytes(v)) {
            h.append(k, v);
        }
    }
    h
}

/// Whether some header carries exactly what a sender holding `secret` sends.
fn carries_secret(h: &HeaderMap, secret: &[u8], body: &[u8]) -> bool {
    let good = sign(secret, body);
    let sig_ok = |name: &str| {
        h.get_all(name).iter().any(|v| v.to_str().is_ok_and(|s| s.trim().eq_ignore_ascii_case(&good)))
    };
    sig_ok(GITHUB_SIGNATURE)
        || sig_ok(GENERIC_SIGNATURE)
        || h.get_all(GITLAB_TOKEN).iter().any(|v| v.as_bytes() == secret)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_requests_never_panic_and_are_not_authentic(
        kind in kind(),
        secret in proptest::collection::vec(any::<u8>(), 0..40),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        pairs in proptest::collection::vec((header_name(), header_value()), 0..6),
    ) {
        let h = headers(&pairs);
        let ok = authentic(kind.as_deref(), &secret, &h, &body);
        // Authentic only when a header holds the real signature or token.
        prop_assert!(!ok || carries_secret(&h, &secret, &body));
    }

    #[test]
    fn a_valid_signature_fails_after_any_change(
        secret in proptest::collection::vec(any::<u8>(), 1..40),
        body in proptest::collection::vec(any::<u8>(), 1..512),
        flip in (any::<prop::sample::Index>(), 1u8..=255),
        generic in any::<bool>(),
    ) {
        // The generic variant signs "<timestamp>.<body>" and sends the
        // timestamp; checked at that instant.
        const NOW: i64 = 1_700_000_000;
        let (name, k) = if generic { (GENERIC_SIGNATURE, "generic") } else { (GITHUB_SIGNATURE, "github") };
        let signed = |secret: &[u8], body: &[u8]| {
            if generic { sign_generic(secret, NOW, body) } else { sign(secret, body) }
        };
        let with = |sig: Vec<u8>| {
            let mut pairs = vec![(name.to_string(), sig)];
            if generic {
                pairs.push((GENERIC_TIMESTAMP.to_string(), NOW.to_string().into_bytes()));
            }
            headers(&pairs)
        };
        let check = |kind: Option<&str>, secret: &[u8], h: &HeaderMap, body: &[u8]| {
            authentic_at(kind, secret, h, body, NOW)
        };
        let good = signed(&secret, &body);
        let h = with(good.clone().into_bytes());
        prop_assert!(check(None, &secret, &h, &body));
        prop_assert!(check(Some(k), &secret, &h, &body));
        // Another expected type ignores the header.
        prop_assert!(!check(Some("gitlab"), &secret, &h, &body));
        // The body changed.
        let mut other = body.clone();
        let i = flip.0.index(other.len());
        other[i] ^= flip.1;
        prop_assert!(!check(None, &secret, &h, &other));
        // The secret changed.
        let mut wrong = secret.clone();
        let j = flip.0.index(wrong.len());
        wrong[j] ^= flip.1;
        prop_assert!(!check(None, &wrong, &h, &body));
        // One hex digit of the signature changed, or it was cut short.
        let mut sig = good.into_bytes();
        let at = "sha256=".len() + flip.0.index(64);
        sig[at] = if sig[at] == b'0' { b'1' } else { b'0' };
        prop_assert!(!check(None, &secret, &with(sig.clone()), &body));
        sig.truncate(at);
        prop_assert!(!check(None, &secret, &with(sig), &body));
        if generic {
            // A stale timestamp fails even with the right signature.
            prop_assert!(!authentic_at(None, &secret, &h, &body, NOW + 3600));
        }
    }

    #[test]
    fn a_gitlab_token_must_match_exactly(
        secret in proptest::collection::vec(0x21u8..0x7f, 1..40),
        extra in "[ -~]{1,4}",
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let h = headers(&[(GITLAB_TOKEN.to_string(), secret.clone())]);
        prop_assert!(authentic(None, &secret, &h, &body));
        prop_assert!(!authentic(Some("github"), &secret, &h, &body));
        let mut longer = secret.clone();
        longer.extend_from_slice(extra.as_bytes());
        prop_assert!(!authentic(None, &secret, &headers(&[(GITLAB_TOKEN.to_string(), longer)]), &body));
        prop_assert!(!authentic(None, &secret, &headers(&[(GITLAB_TOKEN.to_string(), secret[..secret.len() - 1].to_vec())]), &body));
    }
}
