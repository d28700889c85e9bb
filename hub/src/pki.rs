//! The hub's certificate authority and the identities it issues.
//!
//! On first start with no CA configured, the hub creates an ECDSA P-256 CA in
//! its data dir. It issues the server certificate (SANs `localhost`,
//! `127.0.0.1`, `::1` plus configured names), cluster certificates (URI SAN
//! `spiffe://convoy/cluster/<name>`, client auth only, signed from the public
//! key of the agent's CSR) and admin certificates (`spiffe://convoy/admin/<name>`).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use convoy_core::identity::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use time::OffsetDateTime;

use crate::{Error, Result, files};

/// Allowance for clock skew between hub and agents.
const BACKDATE: Duration = Duration::from_secs(300);

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// PEM of the certificate.
    pub pem: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// Expiry (Unix ms).
    pub not_after_unix_ms: i64,
}

/// What the hub reads from a verified peer certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// The identity from the URI SAN.
    pub identity: Identity,
    /// Serial, lowercase hex.
    pub serial: String,
    /// Expiry (Unix ms).
    pub not_after_unix_ms: i64,
}

/// The hub CA.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn tls_err(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |e| Error::Tls(format!("{what}: {e}"))
}

fn offset(unix_ms: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
        .map_err(|e| Error::Tls(format!("time: {e}")))
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, so the DER integer is exactly these bytes.
    b[0] = (b[0] & 0x7f).max(1);
    SerialNumber::from_slice(&b)
}

impl Ca {
    /// Load the CA from `cert_file`/`key_file`, or create both when neither exists.
    pub fn load_or_create(cert_file: &Path, key_file: &Path, now_unix_ms: i64) -> Result<Self> {
        if cert_file.exists() || key_file.exists() {
            let cert_pem = files::read_string(cert_file)?;
            let key_pem = files::read_string(key_file)?;
            return Self::from_pem(&cert_pem, &key_pem);
        }
        let key = KeyPair::generate().map_err(tls_err("CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Convoy");
        dn.push(DnType::CommonName, "Convoy hub CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = offset(now_unix_ms - BACKDATE.as_millis() as i64)?;
        params.not_after = offset(now_unix_ms + Duration::from_secs(10 * 365 * 86400).as_millis() as i64)?;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(tls_err("CA certificate"))?;
        files::write_private(key_file, key.serialize_pem().as_bytes())?;
        files::write_public(cert_file, cert.pem().as_bytes())?;
        Ok(Self { cert_der: cert.der().clone(), cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// A CA from PEM text.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(tls_err("CA key"))?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| Error::Tls(format!("CA certificate: {e}")))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(tls_err("CA certificate"))?;
        Ok(Self { issuer, cert_pem: cert_pem.to_string(), cert_der })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        key: &impl PublicKeyData,
        ttl: Duration,
        now: i64,
    ) -> Result<IssuedCert> {
        params.not_before = offset(now - BACKDATE.as_millis() as i64)?;
        params.not_after = offset(now + ttl.as_millis() as i64)?;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(key, &self.issuer).map_err(tls_err("issue certificate"))?;
        let peer = parse_cert(cert.der())?;
        Ok(IssuedCert { pem: cert.pem(), serial: peer.1, not_after_unix_ms: peer.2 })
    }

    /// Issue a client certificate for `identity` for the public key of a PEM CSR.
    /// Only the key is taken from the CSR (its signature is checked); subject and
    /// SANs are the hub's.
    pub fn issue_from_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
        now: i64,
    ) -> Result<IssuedCert> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            Error::Rejected(crate::domain::Rejection::InvalidArgument(format!("bad CSR: {e}")))
        })?;
        self.issue(client_params(identity)?, &csr.public_key, ttl, now)
    }

    /// Issue a client certificate for `identity` with a fresh key; returns the
    /// certificate and the PKCS#8 key PEM (admin credentials, tests).
    pub fn issue_with_key(
        &self,
        identity: &Identity,
        ttl: Duration,
        now: i64,
    ) -> Result<(IssuedCert, String)> {
        let key = KeyPair::generate().map_err(tls_err("key"))?;
        let cert = self.issue(client_params(identity)?, &key, ttl, now)?;
        Ok((cert, key.serialize_pem()))
    }

    /// Issue a server certificate for `names` (DNS names or IPs) with a fresh
    /// key; returns (certificate PEM, key PEM).
    pub fn issue_server(&self, names: &[String], ttl: Duration, now: i64) -> Result<(String, String)> {
        let key = KeyPair::generate().map_err(tls_err("server key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "convoy-hub");
        params.distinguished_name = dn;
        for n in names {
            params.subject_alt_names.push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into().map_err(tls_err("server name"))?),
            });
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = self.issue(params, &key, ttl, now)?;
        Ok((cert.pem, key.serialize_pem()))
    }
}

fn client_params(identity: &Identity) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Convoy");
    dn.push(DnType::CommonName, identity.name());
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(identity.uri().try_into().map_err(tls_err("identity"))?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// Parse a DER certificate: (identity URI if any, serial hex, not_after ms).
fn parse_cert(der: &[u8]) -> Result<(Option<String>, String, i64)> {
    let (_, x) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Error::Tls(format!("parse certificate: {e}")))?;
    let serial = hex::encode(x.raw_serial());
    let not_after = x.validity().not_after.timestamp() * 1000;
    let mut uri = None;
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = n {
                uri = Some(u.to_string());
                break;
            }
        }
    }
    Ok((uri, serial, not_after))
}

/// Read the identity, serial and expiry from a peer certificate that rustls
/// already verified against the CA. `None` when it carries no Convoy identity.
pub fn peer_cert(der: &[u8]) -> Option<PeerCert> {
    let (uri, serial, not_after_unix_ms) = parse_cert(der).ok()?;
    let identity = Identity::parse_uri(&uri?).ok()?;
    Some(PeerCert { identity, serial, not_after_unix_ms })
}

/// Parse PEM certificates (a chain or bundle).
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Tls(format!("certificates: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls("no certificate in PEM".into()));
    }
    Ok(certs)
}

/// Parse a PEM private key (PKCS#8, SEC1 or PKCS#1).
pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| Error::Tls(format!("private key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_issues_identities_from_csrs_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let (cf, kf) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
        let ca = Ca::load_or_create(&cf, &kf, 1_700_000_000_000).unwrap();
        let agent_key = KeyPair::generate().unwrap();
        let mut req = CertificateParams::default();
        // A CSR asking for another identity: the hub ignores what it asks for.
        req.subject_alt_names = vec![SanType::URI("spiffe://convoy/admin/evil".try_into().unwrap())];
        let csr = req.serialize_request(&agent_key).unwrap().pem().unwrap();
        let id = Identity::Cluster("prod-1".into());
        let now = 1_700_000_000_000;
        let issued = ca.issue_from_csr(&csr, &id, Duration::from_secs(3600), now).unwrap();
        let der = certs_from_pem(&issued.pem).unwrap();
        let peer = peer_cert(&der[0]).unwrap();
        assert_eq!(peer.identity, id);
        assert_eq!(peer.serial, issued.serial);
        assert_eq!(peer.not_after_unix_ms, now + 3_600_000);
        assert!(ca.issue_from_csr("garbage", &id, Duration::from_secs(1), now).is_err());

        let again = Ca::load_or_create(&cf, &kf, now).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let (cert, _key) =
            again.issue_with_key(&Identity::Admin("root".into()), Duration::from_secs(60), now).unwrap();
        let peer = peer_cert(&certs_from_pem(&cert.pem).unwrap()[0]).unwrap();
        assert_eq!(peer.identity, Identity::Admin("root".into()));
    }
}
