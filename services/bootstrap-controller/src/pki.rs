//! Certificates made in Rust (rcgen), never on the hosts: the etcd cluster's CA, a server and a
//! peer certificate per datastore (its IP as SAN), and one client certificate the API servers and
//! the health check use. Also the kubeadm cluster CA, whose public key gives the join discovery
//! hash. CA keys are sealed into state and kept, so certificates can be renewed later.
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType,
};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::BTreeMap;
use std::net::IpAddr;

const CA_YEARS: i32 = 10;
const LEAF_YEARS: i32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating {what}: {source}")]
    Rcgen { what: String, source: rcgen::Error },
    #[error("{0:?} is not an IP address (etcd certificates carry the datastores' IPs)")]
    NotAnIp(String),
    #[error("{what}: {message}")]
    Key { what: &'static str, message: String },
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertKey {
    pub cert: String,
    pub key: String,
}

/// Everything the etcd cluster and its clients need; sealed in state as one JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdPki {
    pub ca: CertKey,
    /// Per datastore VM name.
    pub server: BTreeMap<String, CertKey>,
    pub peer: BTreeMap<String, CertKey>,
    pub client: CertKey,
}

fn rc<T>(what: &str, r: Result<T, rcgen::Error>) -> Result<T, PkiError> {
    r.map_err(|source| PkiError::Rcgen { what: what.to_string(), source })
}

/// Today's date (UTC) as (year, month, day).
fn today() -> (i32, u8, u8) {
    let days = (ksctl_core::now_ms() / 1000) as i64 / 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400) as i32 + i32::from(m <= 2);
    (y, m, d)
}

fn params(cn: &str, org: Option<&str>, years: i32) -> Result<CertificateParams, PkiError> {
    let mut p = rc("certificate parameters", CertificateParams::new(Vec::<String>::new()))?;
    p.distinguished_name.push(DnType::CommonName, cn);
    if let Some(o) = org {
        p.distinguished_name.push(DnType::OrganizationName, o);
    }
    let (y, m, d) = today();
    // A day of slack for hosts whose clocks run a little behind ours.
    p.not_before = rcgen::date_time_ymd(y, m, d) - std::time::Duration::from_secs(86_400);
    p.not_after = rcgen::date_time_ymd(y + years, m, d.min(28));
    Ok(p)
}

/// A new CA: its certificate and key, and the issuer that signs with it.
pub fn new_ca(cn: &str) -> Result<(CertKey, Issuer<'static, KeyPair>), PkiError> {
    let key = rc("CA key", KeyPair::generate())?;
    let mut p = params(cn, None, CA_YEARS)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = rc(cn, p.self_signed(&key))?;
    let ck = CertKey { cert: cert.pem(), key: key.serialize_pem() };
    Ok((ck, Issuer::new(p, key)))
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    cn: &str,
    org: Option<&str>,
    ips: &[IpAddr],
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> Result<CertKey, PkiError> {
    let key = rc(cn, KeyPair::generate())?;
    let mut p = params(cn, org, LEAF_YEARS)?;
    p.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
    if !ips.is_empty() {
        p.subject_alt_names.push(rc(cn, "localhost".try_into().map(SanType::DnsName))?);
    }
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = usages;
    let cert = rc(cn, p.signed_by(&key, issuer))?;
    Ok(CertKey { cert: cert.pem(), key: key.serialize_pem() })
}

fn ip(s: &str) -> Result<IpAddr, PkiError> {
    s.parse().map_err(|_| PkiError::NotAnIp(s.to_string()))
}

/// The etcd PKI for datastores given as (VM name, private IP). Server certificates also allow
/// client auth (etcd's own health checks and gateway use them that way).
pub fn etcd(cluster: &str, datastores: &[(String, String)]) -> Result<EtcdPki, PkiError> {
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let (ca, issuer) = new_ca(&format!("ksctl etcd CA {cluster}"))?;
    let loopback: IpAddr = "127.0.0.1".parse().expect("literal");
    let mut server = BTreeMap::new();
    let mut peer = BTreeMap::new();
    for (name, addr) in datastores {
        let addr = ip(addr)?;
        server.insert(name.clone(), leaf(&issuer, name, None, &[addr, loopback], vec![ServerAuth, ClientAuth])?);
        peer.insert(name.clone(), leaf(&issuer, name, None, &[addr], vec![ServerAuth, ClientAuth])?);
    }
    let client = leaf(&issuer, "ksctl-etcd-client", Some("ksctl"), &[], vec![ClientAuth])?;
    Ok(EtcdPki { ca, server, peer, client })
}

/// A P-256 private key (PKCS#8 PEM, as ksctl makes them) as SEC1 (`EC PRIVATE KEY`). kubeadm
/// 1.20 hands control-plane keys to joining control planes (`--upload-certs`) and parses them
/// back with a reader that knows PKCS#1, SEC1 and RSA in PKCS#8, but not EC in PKCS#8 ("unknown
/// data found in Secret entry"): every key kubeadm may transfer is written as SEC1.
pub fn sec1_pem(pkcs8_pem: &str) -> Result<String, PkiError> {
    use base64::Engine;
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::DecodePrivateKey;
    let key = p256::SecretKey::from_pkcs8_pem(pkcs8_pem)
        .map_err(|e| PkiError::Key { what: "reading a P-256 key", message: e.to_string() })?;
    // ECPrivateKey (RFC 5915) with the curve named: readers (Go's, OpenSSL's) need [0] to know
    // the curve, and p256's own encoder leaves it out.
    const PRIME256V1: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let point = key.public_key().to_encoded_point(false);
    let mut body = vec![0x02, 0x01, 0x01, 0x04, 0x20];
    body.extend_from_slice(&key.to_bytes());
    body.extend_from_slice(&[0xa0, PRIME256V1.len() as u8]);
    body.extend_from_slice(&PRIME256V1);
    body.extend_from_slice(&[0xa1, 0x44, 0x03, 0x42, 0x00]);
    body.extend_from_slice(point.as_bytes());
    let mut der = vec![0x30, body.len() as u8];
    der.extend(body);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64")).collect();
    Ok(format!("-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n", lines.join("\n")))
}

/// kubeadm's `--discovery-token-ca-cert-hash`: `sha256:` and the hex SHA-256 of the CA's
/// DER-encoded SubjectPublicKeyInfo.
pub fn ca_cert_hash(ca_key_pem: &str) -> Result<String, PkiError> {
    let key = rc("reading the CA key", KeyPair::from_pem(ca_key_pem))?;
    let digest = sha2::Sha256::digest(key.subject_public_key_info());
    Ok(format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cmd: &str, dir: &std::path::Path) -> std::process::Output {
        std::process::Command::new("sh").arg("-c").arg(cmd).current_dir(dir).output().expect("sh")
    }

    #[test]
    fn civil_dates_are_right() {
        let (y, m, d) = today();
        assert!((2024..2200).contains(&y) && (1..=12).contains(&m) && (1..=31).contains(&d));
    }

    /// openssl, an independent implementation, accepts the chain and sees the SANs.
    #[test]
    fn etcd_certificates_verify_against_their_ca_with_ip_sans() {
        let ds = vec![("c-vm-ds-0".to_string(), "10.0.0.5".to_string()), ("c-vm-ds-1".into(), "10.0.0.6".into())];
        let pki = etcd("c", &ds).unwrap();
        assert_eq!(pki.server.len(), 2);
        let dir = std::env::temp_dir().join(format!("ksctl-pki-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.crt"), &pki.ca.cert).unwrap();
        std::fs::write(dir.join("s.crt"), &pki.server["c-vm-ds-1"].cert).unwrap();
        std::fs::write(dir.join("c.crt"), &pki.client.cert).unwrap();
        let out = run("openssl verify -CAfile ca.crt s.crt c.crt", &dir);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&run("openssl x509 -in s.crt -noout -text", &dir).stdout).into_owned();
        assert!(text.contains("IP Address:10.0.0.6") && text.contains("IP Address:127.0.0.1"), "{text}");
        assert!(text.contains("TLS Web Server Authentication") && text.contains("TLS Web Client Authentication"));
        let client = String::from_utf8_lossy(&run("openssl x509 -in c.crt -noout -subject", &dir).stdout).into_owned();
        assert!(client.contains("ksctl-etcd-client"), "{client}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_host_name_is_refused_where_an_ip_is_needed() {
        let err = etcd("c", &[("x".into(), "db.example".into())]).unwrap_err();
        assert!(err.to_string().contains("not an IP address"));
    }

    /// openssl reads the SEC1 form as the same key: the public halves match.
    #[test]
    fn keys_convert_to_sec1() {
        let (ca, _) = new_ca("kubernetes").unwrap();
        let sec1 = sec1_pem(&ca.key).unwrap();
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{sec1}");
        let dir = std::env::temp_dir().join(format!("ksctl-sec1-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.key"), &ca.key).unwrap();
        std::fs::write(dir.join("b.key"), &sec1).unwrap();
        let a = run("openssl pkey -in a.key -pubout", &dir);
        let b = run("openssl pkey -in b.key -pubout", &dir);
        assert!(a.status.success() && !a.stdout.is_empty());
        assert_eq!(a.stdout, b.stdout, "{}", String::from_utf8_lossy(&b.stderr));
        let text = String::from_utf8_lossy(&run("openssl ec -in b.key -noout -text", &dir).stdout).into_owned();
        assert!(text.contains("ASN1 OID: prime256v1"), "the curve is named: {text}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(sec1_pem("not a key").is_err());
    }

    /// The hash kubeadm computes for the same CA, checked with openssl the way kubeadm's docs do.
    #[test]
    fn ca_hash_matches_openssl() {
        let (ca, _) = new_ca("kubernetes").unwrap();
        let dir = std::env::temp_dir().join(format!("ksctl-hash-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.crt"), &ca.cert).unwrap();
        let out = run("openssl x509 -pubkey -in ca.crt | openssl pkey -pubin -outform der | sha256sum", &dir);
        let want = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string();
        assert_eq!(ca_cert_hash(&ca.key).unwrap(), format!("sha256:{want}"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
