//! `portico.verify_signature`: JWS signature verification (RFC 7518, and RFC 8037's EdDSA with
//! Ed25519) done natively with aws-lc-rs, for plugins that check tokens on every request.
//!
//! Arguments (lengths are little-endian `u32` unless said):
//!
//! ```text
//! u8  alg_len | alg      JWS name: RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA
//!                        HS256 HS384 HS512
//! u32 key_len | key      RS*/PS*: u32 n_len | n | e (JWK `n` and `e`, big-endian, 2048..8192 bits)
//!                        ES256/ES384: SEC1 uncompressed point 0x04 | x | y
//!                        EdDSA: the 32-byte Ed25519 public key
//!                        HS*: the secret
//! u32 msg_len | message  the signed bytes (for JWS, `header.payload`)
//! the rest               the signature (for ES*, the fixed-width r || s of JWS)
//! ```
//!
//! The result is one byte: 1 when the signature is valid, 0 when it is not. Only the signature
//! and the message come from a token; everything else is the plugin's to get right, so a
//! malformed call (truncated, an unknown algorithm, a key of the wrong shape or an RSA modulus
//! under 2048 bits) is `BadArgument`, while a signature of the wrong length is just invalid.
//!
//! Parsed public keys are cached by algorithm and key bytes: a token's key set is small and
//! reused on every request, and a fresh RSA-2048 key costs about 3 µs (parsing and its first
//! Montgomery setup) on top of a 14 µs verification. ECDSA and Ed25519 keys gain little (about
//! 1 µs on 40 for ES256) but share the path. HMAC secrets are not cached: keying costs 0.15 to
//! 0.45 µs, and secrets are better not kept. (Release build, `timing` in the tests.)

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use aws_lc_rs::hmac;
use aws_lc_rs::signature::{
    self, EcdsaVerificationAlgorithm, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents,
};

use super::Error;

/// Parsed keys per algorithm; past this, an arbitrary one makes room for the next.
const MAX_KEYS_PER_ALGORITHM: usize = 128;

/// How a signature is checked.
enum Scheme {
    Public(Public),
    Hmac(hmac::Algorithm),
}

/// The public-key families, and how their keys are encoded.
enum Public {
    Rsa(&'static RsaParameters),
    /// The curve's verification algorithm and the byte length of one coordinate.
    Ecdsa(&'static EcdsaVerificationAlgorithm, usize),
    Ed25519,
}

/// The algorithms by JWS name; an algorithm's position is also its slot in [`KeyCache`].
static ALGORITHMS: [(&str, Scheme); 12] = [
    ("RS256", rsa(&signature::RSA_PKCS1_2048_8192_SHA256)),
    ("RS384", rsa(&signature::RSA_PKCS1_2048_8192_SHA384)),
    ("RS512", rsa(&signature::RSA_PKCS1_2048_8192_SHA512)),
    ("PS256", rsa(&signature::RSA_PSS_2048_8192_SHA256)),
    ("PS384", rsa(&signature::RSA_PSS_2048_8192_SHA384)),
    ("PS512", rsa(&signature::RSA_PSS_2048_8192_SHA512)),
    ("ES256", ecdsa(&signature::ECDSA_P256_SHA256_FIXED, 32)),
    ("ES384", ecdsa(&signature::ECDSA_P384_SHA384_FIXED, 48)),
    ("EdDSA", Scheme::Public(Public::Ed25519)),
    ("HS256", Scheme::Hmac(hmac::HMAC_SHA256)),
    ("HS384", Scheme::Hmac(hmac::HMAC_SHA384)),
    ("HS512", Scheme::Hmac(hmac::HMAC_SHA512)),
];

const fn rsa(params: &'static RsaParameters) -> Scheme {
    Scheme::Public(Public::Rsa(params))
}

const fn ecdsa(algorithm: &'static EcdsaVerificationAlgorithm, coordinate_len: usize) -> Scheme {
    Scheme::Public(Public::Ecdsa(algorithm, coordinate_len))
}

/// Parsed public keys, one map per algorithm slot, keyed by the key bytes of the call.
#[derive(Default)]
pub struct KeyCache {
    slots: [RwLock<KeyMap>; ALGORITHMS.len()],
}

/// Key bytes → their parsed key, for one algorithm.
type KeyMap = HashMap<Box<[u8]>, Arc<ParsedPublicKey>>;

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").finish_non_exhaustive()
    }
}

impl KeyCache {
    /// The parsed key for `key` in `slot`, parsed and remembered on first use. Keys that do not
    /// parse are not remembered.
    fn get(&self, slot: usize, public: &Public, key: &[u8]) -> Result<Arc<ParsedPublicKey>, Error> {
        let map = self.slots.get(slot).ok_or(Error::Internal)?;
        if let Some(parsed) = map.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Ok(parsed.clone());
        }
        let parsed = Arc::new(parse_public_key(public, key)?);
        let mut map = map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_KEYS_PER_ALGORITHM
            && let Some(old) = map.keys().next().cloned()
        {
            map.remove(&old);
        }
        map.insert(key.into(), parsed.clone());
        Ok(parsed)
    }
}

/// `portico.verify_signature`: see the module documentation.
pub(super) fn verify_signature(keys: &KeyCache, args: &[u8]) -> Result<Vec<u8>, Error> {
    let (&alg_len, rest) = args.split_first().ok_or(Error::BadArgument)?;
    let (alg, rest) = rest
        .split_at_checked(usize::from(alg_len))
        .ok_or(Error::BadArgument)?;
    let (key, rest) = length_prefixed(rest)?;
    let (message, signature) = length_prefixed(rest)?;
    let (slot, scheme) = ALGORITHMS
        .iter()
        .enumerate()
        .find(|(_, (name, _))| name.as_bytes() == alg)
        .map(|(slot, (_, scheme))| (slot, scheme))
        .ok_or(Error::BadArgument)?;
    let valid = match scheme {
        Scheme::Hmac(algorithm) => {
            // An empty secret is a missing one: anyone could sign with it.
            if key.is_empty() {
                return Err(Error::BadArgument);
            }
            hmac::verify(&hmac::Key::new(*algorithm, key), message, signature).is_ok()
        }
        Scheme::Public(public) => keys
            .get(slot, public, key)?
            .verify_sig(message, signature)
            .is_ok(),
    };
    Ok(vec![u8::from(valid)])
}

/// Splits `u32 len | len bytes | rest` into the bytes and the rest.
fn length_prefixed(bytes: &[u8]) -> Result<(&[u8], &[u8]), Error> {
    let (len, rest) = bytes.split_first_chunk::<4>().ok_or(Error::BadArgument)?;
    let len = usize::try_from(u32::from_le_bytes(*len)).map_err(|_| Error::BadArgument)?;
    rest.split_at_checked(len).ok_or(Error::BadArgument)
}

/// A public key in its wire encoding, checked for the shape its family requires.
fn parse_public_key(public: &Public, key: &[u8]) -> Result<ParsedPublicKey, Error> {
    match public {
        Public::Rsa(params) => {
            let (n, e) = length_prefixed(key)?;
            // JWK integers have no leading zeros, but some encoders add one; aws-lc-rs wants none.
            let (n, e) = (trim_leading_zeros(n), trim_leading_zeros(e));
            // aws-lc's own checks, done here so that a bad key is a bad argument and not an
            // invalid signature: n odd and 2048..8192 bits, e odd and 2..33 bits.
            let odd = |x: &[u8]| x.last().is_some_and(|b| b & 1 == 1);
            let n_ok = odd(n) && (2048..=8192).contains(&bit_len(n));
            let e_ok = odd(e) && (2..=33).contains(&bit_len(e));
            if !(n_ok && e_ok) {
                return Err(Error::BadArgument);
            }
            RsaPublicKeyComponents { n, e }
                .to_parsed_public_key(params)
                .map_err(|_| Error::BadArgument)
        }
        Public::Ecdsa(algorithm, coordinate_len) => {
            // aws-lc-rs would also take SubjectPublicKeyInfo DER; the wire format is SEC1 only.
            if key.len() != 1 + 2 * coordinate_len || key.first() != Some(&0x04) {
                return Err(Error::BadArgument);
            }
            ParsedPublicKey::new(*algorithm, key).map_err(|_| Error::BadArgument)
        }
        Public::Ed25519 => {
            if key.len() != signature::ED25519_PUBLIC_KEY_LEN {
                return Err(Error::BadArgument);
            }
            ParsedPublicKey::new(&signature::ED25519, key).map_err(|_| Error::BadArgument)
        }
    }
}

fn trim_leading_zeros(bytes: &[u8]) -> &[u8] {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    &bytes[zeros..]
}

/// The bit length of a big-endian integer without leading zeros.
fn bit_len(bytes: &[u8]) -> usize {
    match bytes.first() {
        None => 0,
        Some(first) => (bytes.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
    }
}

#[cfg(test)]
mod tests;
