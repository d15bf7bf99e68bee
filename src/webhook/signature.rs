//! The signature on every webhook call, so a receiver can tell kiln's calls from forgeries and
//! replays: `Kiln-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//! Signing the timestamp with the body lets a receiver refuse old calls replayed by whoever saw
//! one; docs/webhooks.md shows how to verify.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HEADER: &str = "Kiln-Signature";

/// The key, prepared once.
#[derive(Clone)]
pub struct Signer(Hmac<Sha256>);

impl Signer {
    pub fn new(secret: &str) -> Result<Signer, hmac::digest::InvalidLength> {
        <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).map(Signer)
    }

    /// The header value for `body` sent at `unix_secs`.
    pub fn sign(&self, unix_secs: u64, body: &[u8]) -> String {
        let mut mac = self.0.clone();
        mac.update(unix_secs.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("t={unix_secs},v1={hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_the_documented_python_recipe() {
        // python3 -c 'import hmac, hashlib;
        //   print(hmac.new(b"s3cret", b"1700000000." + b"{\"a\":1}", hashlib.sha256).hexdigest())'
        let signer = Signer::new("s3cret").unwrap();
        assert_eq!(
            signer.sign(1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940"
        );
    }
}
