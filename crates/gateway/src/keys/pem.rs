//! `FIELDCAST_JWT_PUBLIC_KEY`: one PEM public key, RSA (pinned to RS256)
//! or EC P-256 (pinned to ES256).
//!
//! Accepted: `PUBLIC KEY` (SubjectPublicKeyInfo, what `openssl pkey
//! -pubout` and identity providers export) and `RSA PUBLIC KEY` (PKCS#1).
//! jsonwebtoken reads PEM only behind its `use_pem` feature, which pulls
//! in an ASN.1 crate and a bignum crate for what is two nested sequences;
//! walking them here is a few lines. The key bytes themselves are
//! checked by aws-lc when a signature is verified: a malformed modulus
//! refuses every token (401), it never panics.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::VerifyingKey;

/// `1.2.840.113549.1.1.1` rsaEncryption, DER content octets.
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// `1.2.840.10045.2.1` id-ecPublicKey.
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// `1.2.840.10045.3.1.7` prime256v1 (P-256).
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

const SEQUENCE: u8 = 0x30;
const BIT_STRING: u8 = 0x03;
const OID: u8 = 0x06;

/// The key in `pem`, with the one algorithm it may verify.
pub fn parse(pem: &str) -> Result<VerifyingKey, String> {
    let (label, der) = unarmor(pem)?;
    match label.as_str() {
        "RSA PUBLIC KEY" => Ok(VerifyingKey::new(
            Algorithm::RS256,
            DecodingKey::from_rsa_der(&der),
        )),
        "PUBLIC KEY" => spki(&der),
        "CERTIFICATE" => {
            Err("a certificate; export its public key (openssl x509 -pubkey -noout)".into())
        }
        other if other.contains("PRIVATE") => {
            Err("a private key; give the gateway only the public key (openssl pkey -pubout)".into())
        }
        other => Err(format!("unsupported PEM block {other:?} (want PUBLIC KEY)")),
    }
}

/// The first PEM block's label and DER bytes.
fn unarmor(pem: &str) -> Result<(String, Vec<u8>), String> {
    let mut lines = pem.lines().map(str::trim);
    let label = lines
        .by_ref()
        .find_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .ok_or("no PEM block (-----BEGIN ...-----)")?
        .to_owned();
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    for line in lines.by_ref() {
        if line == end {
            let der = base64::engine::general_purpose::STANDARD
                .decode(body.as_bytes())
                .map_err(|e| format!("bad base64 in the PEM block: {e}"))?;
            return Ok((label, der));
        }
        // RFC 7468 allows headers (`Proc-Type: ...`) only in encrypted
        // legacy blocks, which are private keys anyway.
        body.push_str(line);
    }
    Err(format!("PEM block {label:?} has no END line"))
}

/// SubjectPublicKeyInfo: `SEQUENCE { SEQUENCE { OID, params }, BIT STRING }`.
fn spki(der: &[u8]) -> Result<VerifyingKey, String> {
    let bad = |what: &str| format!("not a SubjectPublicKeyInfo: {what}");
    let (info, rest) = tlv(der, SEQUENCE).ok_or_else(|| bad("outer sequence"))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    let (algorithm, rest) = tlv(info, SEQUENCE).ok_or_else(|| bad("algorithm"))?;
    let (bits, rest) = tlv(rest, BIT_STRING).ok_or_else(|| bad("key bits"))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    // The first octet of a BIT STRING counts unused bits: 0 for a key.
    let key = match bits.split_first() {
        Some((0, key)) if !key.is_empty() => key,
        _ => return Err(bad("key bits")),
    };
    let (oid, params) = tlv(algorithm, OID).ok_or_else(|| bad("algorithm identifier"))?;
    match oid {
        OID_RSA => Ok(VerifyingKey::new(
            Algorithm::RS256,
            DecodingKey::from_rsa_der(key),
        )),
        OID_EC => {
            let curve = tlv(params, OID).map(|(c, _)| c);
            if curve != Some(OID_P256) {
                return Err("an EC key on a curve other than P-256 (ES256 needs P-256)".into());
            }
            // Uncompressed point: 0x04 || x || y, 32 bytes each.
            if key.len() != 65 || key[0] != 0x04 {
                return Err("an EC P-256 key that is not an uncompressed point".into());
            }
            Ok(VerifyingKey::new(
                Algorithm::ES256,
                DecodingKey::from_ec_der(key),
            ))
        }
        _ => {
            Err("a key that is neither RSA nor EC P-256 (only RS256 and ES256 are verified)".into())
        }
    }
}

/// One DER element with tag `tag` at the start of `der`: its content and
/// what follows it.
fn tlv(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = der.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: the low bits count the length octets; a key's
        // lengths fit in four.
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    // `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 | openssl pkey -pubout`
    const EC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEfOEfzJmWxC8q5xjeYlkD4gGGwsGS
AcefoHjiZvWH4ZOkkiWgOzNy5798XQQisNM0lzN//giHeHJOafgEp9O7kA==
-----END PUBLIC KEY-----
";

    #[test]
    fn reads_an_ec_p256_key_and_pins_es256() {
        let k = parse(EC).unwrap();
        assert_eq!(k.alg, Algorithm::ES256);
    }

    #[test]
    fn refuses_what_is_not_a_public_key() {
        assert!(parse("").unwrap_err().contains("no PEM block"));
        let private = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(parse(private).unwrap_err().contains("private key"));
        let truncated = EC.replace("-----END PUBLIC KEY-----", "");
        assert!(parse(&truncated).unwrap_err().contains("no END line"));
        let garbage = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(parse(garbage).unwrap_err().contains("SubjectPublicKeyInfo"));
    }

    #[test]
    fn tlv_reads_short_and_long_lengths_and_refuses_overruns() {
        assert_eq!(
            tlv(&[0x30, 0x01, 0xaa, 0xbb], 0x30),
            Some((&[0xaa][..], &[0xbb][..]))
        );
        let mut long = vec![0x30, 0x81, 0x80];
        long.extend([0u8; 0x80]);
        assert_eq!(
            tlv(&long, 0x30).map(|(c, r)| (c.len(), r.len())),
            Some((0x80, 0))
        );
        assert_eq!(tlv(&[0x30, 0x05, 0xaa], 0x30), None);
        assert_eq!(tlv(&[0x02, 0x01, 0xaa], 0x30), None);
    }
}
