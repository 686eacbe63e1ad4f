//! Signature verification for JWS algorithms.
//!
//! [`verify`] asks the host first: Portico verifies natively through the foreign function
//! `portico.verify_signature` (an RS256 or ES256 token costs about 18 or 43 µs that way, and
//! 0.62 or 1.1 ms inside Wasm: docs/benchmarks.md). In a host without it, the
//! `crypto-fallback` feature verifies inside the guest with the RustCrypto crates; without that
//! feature the call is an [`Error::is_unsupported`] error.

use crate::error::{Error, Result};
use crate::sys;

/// A JWS signature algorithm (RFC 7518, RFC 8037).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

/// The kind of key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Rsa,
    Ec,
    Ed25519,
    Hmac,
}

impl Algorithm {
    pub const ALL: [Algorithm; 12] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
    ];

    /// The algorithm of a JWS `alg` name; `None` for anything else (including `none`).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
        }
    }

    pub fn family(&self) -> Family {
        use Algorithm::*;
        match self {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
            ES256 | ES384 => Family::Ec,
            EdDSA => Family::Ed25519,
            HS256 | HS384 | HS512 => Family::Hmac,
        }
    }
}

/// An elliptic curve for ECDSA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Curve {
    P256,
    P384,
}

impl Curve {
    fn size(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

/// A verification key, as a JWK carries it (big-endian integers, raw coordinates).
#[derive(Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Key {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ec {
        curve: Curve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    Ed25519(Vec<u8>),
    Hmac(Vec<u8>),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Rsa { n, .. } => write!(f, "Rsa({} bits)", n.len() * 8),
            Key::Ec { curve, .. } => write!(f, "Ec({curve:?})"),
            Key::Ed25519(_) => f.write_str("Ed25519"),
            Key::Hmac(_) => f.write_str("Hmac(..)"),
        }
    }
}

impl Key {
    pub fn family(&self) -> Family {
        match self {
            Key::Rsa { .. } => Family::Rsa,
            Key::Ec { .. } => Family::Ec,
            Key::Ed25519(_) => Family::Ed25519,
            Key::Hmac(_) => Family::Hmac,
        }
    }

    /// Whether `alg` can be verified with this key (family, and curve for ECDSA).
    pub fn fits(&self, alg: Algorithm) -> bool {
        match (self, alg) {
            (Key::Ec { curve, .. }, Algorithm::ES256) => *curve == Curve::P256,
            (Key::Ec { curve, .. }, Algorithm::ES384) => *curve == Curve::P384,
            _ => self.family() == alg.family(),
        }
    }

    /// The key as `portico.verify_signature` takes it.
    fn encode(&self) -> Result<Vec<u8>> {
        Ok(match self {
            Key::Rsa { n, e } => {
                let mut out = Vec::with_capacity(4 + n.len() + e.len());
                out.extend_from_slice(&(n.len() as u32).to_le_bytes());
                out.extend_from_slice(n);
                out.extend_from_slice(e);
                out
            }
            Key::Ec { curve, x, y } => {
                let size = curve.size();
                if x.len() > size || y.len() > size {
                    return Err(Error::invalid("an EC coordinate is longer than its curve"));
                }
                let mut out = vec![0u8; 1 + 2 * size];
                out[0] = 4;
                out[1 + size - x.len()..1 + size].copy_from_slice(x);
                out[1 + 2 * size - y.len()..].copy_from_slice(y);
                out
            }
            Key::Ed25519(k) | Key::Hmac(k) => k.clone(),
        })
    }
}

thread_local! {
    static NO_HOST_CRYPTO: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Forgets that the host lacked the verifier (the test harness starts each host afresh).
#[cfg(all(not(target_arch = "wasm32"), feature = "testing"))]
pub(crate) fn reset() {
    NO_HOST_CRYPTO.with(|c| c.set(false));
}

/// Whether `signature` over `message` is valid for `key` under `alg`. A key that does not fit
/// the algorithm is never valid. `Err` when the key or arguments are malformed, or when no
/// verifier is available (see the module docs).
pub fn verify(alg: Algorithm, key: &Key, message: &[u8], signature: &[u8]) -> Result<bool> {
    if !key.fits(alg) {
        return Ok(false);
    }
    let key_bytes = key.encode()?;
    if !NO_HOST_CRYPTO.with(|c| c.get()) {
        let name = alg.name().as_bytes();
        let mut args = Vec::with_capacity(
            1 + name.len() + 8 + key_bytes.len() + message.len() + signature.len(),
        );
        args.push(name.len() as u8);
        args.extend_from_slice(name);
        args.extend_from_slice(&(key_bytes.len() as u32).to_le_bytes());
        args.extend_from_slice(&key_bytes);
        args.extend_from_slice(&(message.len() as u32).to_le_bytes());
        args.extend_from_slice(message);
        args.extend_from_slice(signature);
        match sys::call_foreign("portico.verify_signature", &args) {
            Ok(Some(answer)) => return Ok(answer.first() == Some(&1)),
            Ok(None) => NO_HOST_CRYPTO.with(|c| c.set(true)),
            Err(e) if e.is_bad_argument() => {
                return Err(Error::invalid(format!("the host refused the {alg:?} key")));
            }
            Err(e) => return Err(e),
        }
    }
    fallback::verify(alg, key, message, signature)
}

#[cfg(not(feature = "crypto-fallback"))]
mod fallback {
    use super::*;

    pub fn verify(alg: Algorithm, _: &Key, _: &[u8], _: &[u8]) -> Result<bool> {
        Err(Error::unsupported(format!(
            "portico.verify_signature (for {}); build the plugin with the SDK's \
             crypto-fallback feature to verify inside the guest",
            alg.name()
        )))
    }
}

#[cfg(feature = "crypto-fallback")]
mod fallback {
    use super::*;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256, Sha384, Sha512};

    pub fn verify(alg: Algorithm, key: &Key, message: &[u8], signature: &[u8]) -> Result<bool> {
        use Algorithm::*;
        match (alg, key) {
            (RS256 | RS384 | RS512 | PS256 | PS384 | PS512, Key::Rsa { n, e }) => {
                rsa(alg, n, e, message, signature)
            }
            (ES256, Key::Ec { .. }) => {
                use p256::ecdsa::signature::Verifier;
                let point = key.encode()?;
                let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                    .map_err(|_| Error::invalid("not a P-256 public key"))?;
                let Ok(sig) = p256::ecdsa::Signature::from_slice(signature) else {
                    return Ok(false);
                };
                Ok(vk.verify(message, &sig).is_ok())
            }
            (ES384, Key::Ec { .. }) => {
                use p384::ecdsa::signature::Verifier;
                let point = key.encode()?;
                let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                    .map_err(|_| Error::invalid("not a P-384 public key"))?;
                let Ok(sig) = p384::ecdsa::Signature::from_slice(signature) else {
                    return Ok(false);
                };
                Ok(vk.verify(message, &sig).is_ok())
            }
            (EdDSA, Key::Ed25519(k)) => {
                let bytes: [u8; 32] = k
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::invalid("an Ed25519 key is 32 bytes"))?;
                let vk = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                    .map_err(|_| Error::invalid("not an Ed25519 public key"))?;
                let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
                    return Ok(false);
                };
                Ok(vk.verify_strict(message, &sig).is_ok())
            }
            (HS256, Key::Hmac(k)) => Ok(hmac::<Hmac<Sha256>>(k, message, signature)),
            (HS384, Key::Hmac(k)) => Ok(hmac::<Hmac<Sha384>>(k, message, signature)),
            (HS512, Key::Hmac(k)) => Ok(hmac::<Hmac<Sha512>>(k, message, signature)),
            _ => Ok(false),
        }
    }

    fn hmac<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
            return false;
        };
        mac.update(message);
        mac.verify_slice(signature).is_ok()
    }

    fn rsa(alg: Algorithm, n: &[u8], e: &[u8], message: &[u8], signature: &[u8]) -> Result<bool> {
        use ::rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPublicKey};
        let n = BigUint::from_bytes_be(n);
        if n.bits() < 2048 {
            return Err(Error::invalid("RSA keys under 2048 bits are refused"));
        }
        let key = RsaPublicKey::new(n, BigUint::from_bytes_be(e))
            .map_err(|_| Error::invalid("not an RSA public key"))?;
        let ok = match alg {
            Algorithm::RS256 => key.verify(
                Pkcs1v15Sign::new::<Sha256>(),
                &Sha256::digest(message),
                signature,
            ),
            Algorithm::RS384 => key.verify(
                Pkcs1v15Sign::new::<Sha384>(),
                &Sha384::digest(message),
                signature,
            ),
            Algorithm::RS512 => key.verify(
                Pkcs1v15Sign::new::<Sha512>(),
                &Sha512::digest(message),
                signature,
            ),
            Algorithm::PS256 => {
                key.verify(Pss::new::<Sha256>(), &Sha256::digest(message), signature)
            }
            Algorithm::PS384 => {
                key.verify(Pss::new::<Sha384>(), &Sha384::digest(message), signature)
            }
            Algorithm::PS512 => {
                key.verify(Pss::new::<Sha512>(), &Sha512::digest(message), signature)
            }
            _ => return Ok(false),
        };
        Ok(ok.is_ok())
    }
}
