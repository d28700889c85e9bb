//! Signing keys and verification: ECDSA P-256 with SHA-256 (ring), DER
//! signatures, PKCS#8 PEM private keys and SPKI PEM public keys, as
//! `openssl dgst -sha256 -sign/-verify` and `cosign verify-blob --key` use them.

use std::fmt;
use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair, UnparsedPublicKey,
};
use sha2::{Digest as _, Sha256};

use crate::pack::digest_of;
use crate::statement::Statement;
use crate::{Error, Result, VerifyFailure};

/// The DER prefix of a P-256 SubjectPublicKeyInfo with an uncompressed point:
/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) }.
const SPKI_P256_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
    0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const POINT_LEN: usize = 65;

fn pem_lf(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// An ECDSA P-256 private key. Its `Debug` shows only the key id.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("key_id", &self.public_key().key_id()).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<Self> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| Error::Key("cannot generate a P-256 key".into()))?;
        Self::from_pkcs8_der(doc.as_ref())
    }

    /// Load a PKCS#8 DER private key (P-256, with its public key included, as
    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der, &SystemRandom::new())
            .map_err(|e| Error::Key(format!("not a PKCS#8 ECDSA P-256 private key: {e}")))?;
        Ok(Self { pair, pkcs8: der.to_vec() })
    }

    /// Load a `-----BEGIN PRIVATE KEY-----` PEM.
    pub fn from_pkcs8_pem(text: &str) -> Result<Self> {
        let p = pem::parse(text).map_err(|e| Error::Key(format!("not PEM: {e}")))?;
        if p.tag() != "PRIVATE KEY" {
            let hint = if p.tag() == "EC PRIVATE KEY" {
                " (convert with `openssl pkcs8 -topk8 -nocrypt -in key.pem -out signing.key`)"
            } else {
                ""
            };
            return Err(Error::Key(format!(
                "expected a PRIVATE KEY (PKCS#8) PEM, found {:?}{hint}",
                p.tag()
            )));
        }
        Self::from_pkcs8_der(p.contents())
    }

    /// Read a PKCS#8 PEM file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?;
        Self::from_pkcs8_pem(&text).map_err(|e| Error::Key(format!("{}: {e}", path.display())))
    }

    /// The PKCS#8 PEM text.
    pub fn to_pkcs8_pem(&self) -> String {
        pem_lf("PRIVATE KEY", &self.pkcs8)
    }

    /// Write the PKCS#8 PEM to `path` with mode 0600, refusing to overwrite.
    pub fn save(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(path.display(), e))?;
        f.write_all(self.to_pkcs8_pem().as_bytes()).map_err(|e| Error::io(path.display(), e))?;
        f.sync_all().map_err(|e| Error::io(path.display(), e))
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey { point: self.pair.public_key().as_ref().to_vec() }
    }

    /// Sign `message`: ECDSA P-256 over SHA-256, ASN.1 DER.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let sig =
            self.pair.sign(&SystemRandom::new(), message).map_err(|_| Error::Key("signing failed".into()))?;
        Ok(sig.as_ref().to_vec())
    }

    /// Set the statement's `keyId` to this key's id, and return its canonical
    /// bytes and their signature.
    pub fn sign_statement(&self, statement: &Statement) -> Result<(Vec<u8>, Vec<u8>)> {
        let mut s = statement.clone();
        s.key_id = Some(self.public_key().key_id());
        let bytes = s.to_bytes();
        let sig = self.sign(&bytes)?;
        Ok((bytes, sig))
    }
}

/// An ECDSA P-256 public key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    /// The uncompressed point (0x04 || x || y).
    point: Vec<u8>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

impl PublicKey {
    /// Parse a DER SubjectPublicKeyInfo of a P-256 key (uncompressed point).
    pub fn from_spki_der(der: &[u8]) -> Result<Self> {
        match der.strip_prefix(&SPKI_P256_PREFIX[..]) {
            Some(point) if point.len() == POINT_LEN && point[0] == 4 => Ok(Self { point: point.to_vec() }),
            _ => Err(Error::Key(
                "not an ECDSA P-256 public key (SubjectPublicKeyInfo, uncompressed point) as openssl writes it".into(),
            )),
        }
    }

    /// Parse one `-----BEGIN PUBLIC KEY-----` PEM.
    pub fn from_spki_pem(text: &str) -> Result<Self> {
        let p = pem::parse(text).map_err(|e| Error::Key(format!("not PEM: {e}")))?;
        if p.tag() != "PUBLIC KEY" {
            return Err(Error::Key(format!("expected a PUBLIC KEY PEM, found {:?}", p.tag())));
        }
        Self::from_spki_der(p.contents())
    }

    /// Read a PEM file holding one public key.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?;
        Self::from_spki_pem(&text).map_err(|e| Error::Key(format!("{}: {e}", path.display())))
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn to_spki_der(&self) -> Vec<u8> {
        let mut der = SPKI_P256_PREFIX.to_vec();
        der.extend_from_slice(&self.point);
        der
    }

    /// The `-----BEGIN PUBLIC KEY-----` PEM text.
    pub fn to_spki_pem(&self) -> String {
        pem_lf("PUBLIC KEY", &self.to_spki_der())
    }

    /// Write the PEM to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_spki_pem()).map_err(|e| Error::io(path.display(), e))
    }

    /// `sha256:<hex>` of the DER SubjectPublicKeyInfo, the statement's `keyId`
    /// (`openssl pkey -pubin -in signing.pub -outform DER | sha256sum`).
    pub fn key_id(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(self.to_spki_der())))
    }

    /// Whether `signature` (DER) is this key's signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.point).verify(message, signature).is_ok()
    }
}

/// The set of public keys a verifier trusts. Several keys allow rotation: a
/// signature is good when any of them verifies it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl TrustedKeys {
    /// A set of keys (duplicates are dropped).
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        let mut t = Self::default();
        for k in keys {
            t.add(k);
        }
        t
    }

    /// Add a key.
    pub fn add(&mut self, key: PublicKey) {
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
    }

    /// Every `PUBLIC KEY` block of a PEM text (one file may hold several).
    pub fn from_pem(text: &str) -> Result<Self> {
        let blocks = pem::parse_many(text).map_err(|e| Error::Key(format!("not PEM: {e}")))?;
        let mut t = Self::default();
        for p in blocks.iter().filter(|p| p.tag() == "PUBLIC KEY") {
            t.add(PublicKey::from_spki_der(p.contents())?);
        }
        if t.is_empty() {
            return Err(Error::Key("no PUBLIC KEY block found".into()));
        }
        Ok(t)
    }

    /// Read every public key of every file.
    pub fn load<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Result<Self> {
        let mut t = Self::default();
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?;
            let more = Self::from_pem(&text).map_err(|e| Error::Key(format!("{}: {e}", path.display())))?;
            for k in more.keys {
                t.add(k);
            }
        }
        Ok(t)
    }

    /// The keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key that verifies `signature` over `message`, if any.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<&PublicKey> {
        self.keys
            .iter()
            .find(|k| k.verify(message, signature))
            .ok_or(Error::Verify(VerifyFailure::Signature { keys_tried: self.keys.len() }))
    }
}

/// Verify a signed statement: the signature over the exact bytes by a
/// trusted key, then the statement's validity. Returns the parsed statement.
pub fn verify_statement(statement: &[u8], signature: &[u8], trusted: &TrustedKeys) -> Result<Statement> {
    trusted.verify(statement, signature)?;
    Statement::parse(statement).map_err(|e| Error::Verify(VerifyFailure::Statement(e.to_string())))
}

/// Check that a verified statement describes `expected_bundle` and an
/// artifact with this digest and size.
pub fn check_artifact(statement: &Statement, expected_bundle: &str, digest: &str, size: u64) -> Result<()> {
    if statement.bundle != expected_bundle {
        return Err(Error::Verify(VerifyFailure::Bundle {
            expected: expected_bundle.into(),
            actual: statement.bundle.clone(),
        }));
    }
    if statement.artifact.digest != digest {
        return Err(Error::Verify(VerifyFailure::Digest {
            expected: statement.artifact.digest.clone(),
            actual: digest.into(),
        }));
    }
    if statement.artifact.size != size {
        return Err(Error::Verify(VerifyFailure::Size { expected: statement.artifact.size, actual: size }));
    }
    Ok(())
}

/// Everything an agent checks before it applies a bundle: the signature by a
/// trusted key over the exact statement bytes, the statement's bundle name,
/// and the artifact's digest and size. The first failing check is returned as
/// [`Error::Verify`]; on success, the parsed statement.
pub fn verify_bundle(
    statement: &[u8],
    signature: &[u8],
    artifact: &[u8],
    trusted: &TrustedKeys,
    expected_bundle: &str,
) -> Result<Statement> {
    let s = verify_statement(statement, signature, trusted)?;
    check_artifact(&s, expected_bundle, &digest_of(artifact), artifact.len() as u64)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(bytes: &[u8]) -> Statement {
        Statement::new(
            "app",
            "https://git.example/x.git",
            "main@sha1:00",
            digest_of(bytes),
            bytes.len() as u64,
            3,
        )
    }

    #[test]
    fn pem_round_trips() {
        let k = SigningKey::generate().unwrap();
        let k2 = SigningKey::from_pkcs8_pem(&k.to_pkcs8_pem()).unwrap();
        assert_eq!(k.public_key(), k2.public_key());
        let pubpem = k.public_key().to_spki_pem();
        assert!(pubpem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(PublicKey::from_spki_pem(&pubpem).unwrap(), k.public_key());
        assert!(!format!("{k:?}").contains("PRIVATE"));
        assert!(SigningKey::from_pkcs8_pem(&pubpem).is_err());
        assert!(PublicKey::from_spki_pem(&k.to_pkcs8_pem()).is_err());
    }

    #[test]
    fn verify_bundle_says_which_check_failed() {
        let k = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let art = b"artifact bytes".to_vec();
        let (st, sig) = k.sign_statement(&statement(&art)).unwrap();
        let trusted = TrustedKeys::new([other.public_key(), k.public_key()]);
        let s = verify_bundle(&st, &sig, &art, &trusted, "app").unwrap();
        assert_eq!(s.key_id, Some(k.public_key().key_id()));

        let fail = |r: Result<Statement>| match r {
            Err(Error::Verify(v)) => v,
            other => panic!("{other:?}"),
        };
        let only_other = TrustedKeys::new([other.public_key()]);
        assert_eq!(
            fail(verify_bundle(&st, &sig, &art, &only_other, "app")),
            VerifyFailure::Signature { keys_tried: 1 }
        );
        let mut tampered = st.clone();
        tampered[10] ^= 1;
        assert!(matches!(
            fail(verify_bundle(&tampered, &sig, &art, &trusted, "app")),
            VerifyFailure::Signature { .. }
        ));
        assert!(matches!(
            fail(verify_bundle(&st, &sig, &art, &trusted, "web")),
            VerifyFailure::Bundle { .. }
        ));
        let mut art2 = art.clone();
        art2[0] ^= 1;
        assert!(matches!(
            fail(verify_bundle(&st, &sig, &art2, &trusted, "app")),
            VerifyFailure::Digest { .. }
        ));
        // A correctly signed statement with a wrong size, same digest.
        let mut s = statement(&art);
        s.artifact.size += 1;
        let (st3, sig3) = k.sign_statement(&s).unwrap();
        assert!(matches!(
            fail(verify_bundle(&st3, &sig3, &art, &trusted, "app")),
            VerifyFailure::Size { .. }
        ));
        // A signed non-statement.
        let junk = b"{}".to_vec();
        let sig4 = k.sign(&junk).unwrap();
        assert!(matches!(
            fail(verify_bundle(&junk, &sig4, &art, &trusted, "app")),
            VerifyFailure::Statement(_)
        ));
    }

    #[test]
    fn trusted_keys_from_one_file_with_several_blocks() {
        let a = SigningKey::generate().unwrap().public_key();
        let b = SigningKey::generate().unwrap().public_key();
        let text = format!("# keys\n{}{}{}", a.to_spki_pem(), b.to_spki_pem(), a.to_spki_pem());
        let t = TrustedKeys::from_pem(&text).unwrap();
        assert_eq!(t.keys(), [a, b]);
        assert!(TrustedKeys::from_pem("nothing").is_err());
    }
}
