//! The webhook signature: `X-Fieldcast-Signature: sha256=<hex>`, the
//! lowercase hex HMAC-SHA256 of the exact body bytes with the endpoint's
//! secret (docs/webhooks.md shows a receiver checking it). No I/O.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header that carries [`signature`].
pub const HEADER: &str = "X-Fieldcast-Signature";

/// `sha256=<64 lowercase hex digits>` for `body` signed with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length (a long one is hashed first, a short
    // one padded), so `new_from_slice` has no error to give for SHA-256;
    // the empty-MAC fallback only keeps a panic out of the sender.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::from("sha256=");
    };
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + tag.len() * 2);
    out.push_str("sha256=");
    for b in tag.iter() {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0x0f)]);
    }
    out
}

const HEX: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e', 'f',
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the algorithm and the hex form against RFC 4231's test cases 1
    /// and 2 (HMAC-SHA-256), and a key longer than the block size (case 6).
    #[test]
    fn matches_rfc_4231() {
        assert_eq!(
            signature(&[0x0b; 20], b"Hi There"),
            "sha256=b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            signature(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            ),
            "sha256=60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    /// Pins: an empty secret still signs (HMAC with an empty key), so a
    /// misconfigured endpoint is told by a failing check, not by silence.
    #[test]
    fn empty_secret_signs() {
        let s = signature(b"", b"{}");
        assert_eq!(s.len(), 7 + 64);
        assert!(s[7..]
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
