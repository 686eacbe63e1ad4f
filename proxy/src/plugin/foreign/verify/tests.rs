use std::sync::OnceLock;

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};

use super::*;

const ALL: [&str; 12] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
    "HS384", "HS512",
];

const MESSAGE: &[u8] = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwiYWRtaW4iOnRydWV9";

/// Two key pairs of every family, made once per test binary (RSA generation is slow in debug).
struct Keys {
    rsa: [RsaKeyPair; 2],
    p256: [EcdsaKeyPair; 2],
    p384: [EcdsaKeyPair; 2],
    ed25519: [Ed25519KeyPair; 2],
    secret: [Vec<u8>; 2],
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rsa = || RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa key");
        let ecdsa = |alg| EcdsaKeyPair::generate(alg).expect("ecdsa key");
        let ed25519 = || Ed25519KeyPair::generate().expect("ed25519 key");
        let secret = || {
            let mut s = vec![0; 32];
            SystemRandom::new().fill(&mut s).expect("random");
            s
        };
        Keys {
            rsa: [rsa(), rsa()],
            p256: [
                ecdsa(&signature::ECDSA_P256_SHA256_FIXED_SIGNING),
                ecdsa(&signature::ECDSA_P256_SHA256_FIXED_SIGNING),
            ],
            p384: [
                ecdsa(&signature::ECDSA_P384_SHA384_FIXED_SIGNING),
                ecdsa(&signature::ECDSA_P384_SHA384_FIXED_SIGNING),
            ],
            ed25519: [ed25519(), ed25519()],
            secret: [secret(), secret()],
        }
    })
}

/// The RSA public key in the wire encoding: `u32 n_len | n | e`.
fn rsa_wire_key(pair: &RsaKeyPair) -> Vec<u8> {
    let public = pair.public_key();
    let n = public.modulus().big_endian_without_leading_zero().to_vec();
    let e = public.exponent().big_endian_without_leading_zero().to_vec();
    rsa_key(&n, &e)
}

fn rsa_key(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut key = (n.len() as u32).to_le_bytes().to_vec();
    key.extend_from_slice(n);
    key.extend_from_slice(e);
    key
}

/// Key pair `which` (0 or 1) of `alg`'s family: its wire key and its signature of `message`.
fn sign(alg: &str, which: usize, message: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let keys = keys();
    let rng = SystemRandom::new();
    let rsa = |encoding: &'static dyn signature::RsaEncoding| {
        let pair = &keys.rsa[which];
        let mut sig = vec![0; pair.public_modulus_len()];
        pair.sign(encoding, &rng, message, &mut sig)
            .expect("rsa sign");
        (rsa_wire_key(pair), sig)
    };
    let ecdsa = |pair: &EcdsaKeyPair| {
        let sig = pair.sign(&rng, message).expect("ecdsa sign");
        (pair.public_key().as_ref().to_vec(), sig.as_ref().to_vec())
    };
    let hmac = |algorithm| {
        let secret = keys.secret[which].clone();
        let tag = hmac::sign(&hmac::Key::new(algorithm, &secret), message);
        (secret, tag.as_ref().to_vec())
    };
    match alg {
        "RS256" => rsa(&signature::RSA_PKCS1_SHA256),
        "RS384" => rsa(&signature::RSA_PKCS1_SHA384),
        "RS512" => rsa(&signature::RSA_PKCS1_SHA512),
        "PS256" => rsa(&signature::RSA_PSS_SHA256),
        "PS384" => rsa(&signature::RSA_PSS_SHA384),
        "PS512" => rsa(&signature::RSA_PSS_SHA512),
        "ES256" => ecdsa(&keys.p256[which]),
        "ES384" => ecdsa(&keys.p384[which]),
        "EdDSA" => {
            let pair = &keys.ed25519[which];
            let sig = pair.sign(message);
            (pair.public_key().as_ref().to_vec(), sig.as_ref().to_vec())
        }
        "HS256" => hmac(hmac::HMAC_SHA256),
        "HS384" => hmac(hmac::HMAC_SHA384),
        "HS512" => hmac(hmac::HMAC_SHA512),
        _ => panic!("no such algorithm in the tests: {alg}"),
    }
}

/// The arguments of `portico.verify_signature`.
fn args(alg: &str, key: &[u8], message: &[u8], sig: &[u8]) -> Vec<u8> {
    let mut out = vec![alg.len() as u8];
    out.extend_from_slice(alg.as_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(message.len() as u32).to_le_bytes());
    out.extend_from_slice(message);
    out.extend_from_slice(sig);
    out
}

fn verify(alg: &str, key: &[u8], message: &[u8], sig: &[u8]) -> Result<Vec<u8>, Error> {
    verify_signature(&KeyCache::default(), &args(alg, key, message, sig))
}

fn valid() -> Result<Vec<u8>, Error> {
    Ok(vec![1])
}

fn invalid() -> Result<Vec<u8>, Error> {
    Ok(vec![0])
}

/// Algorithms of one family take the same keys.
fn family(alg: &str) -> &str {
    match &alg[..2] {
        "RS" | "PS" => "RSA",
        "ES" => alg,
        other => other,
    }
}

fn flip_bit(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[bit / 8] ^= 1 << (bit % 8);
    out
}

#[test]
fn the_function_is_registered_and_a_plugin_can_be_denied_it() {
    use super::super::{Allowed, lookup};
    assert!(lookup("portico.verify_signature", Allowed::default()).is_some());
    assert!(lookup("portico.verify_signature", Allowed::NONE).is_none());
    let counters_only = Allowed::NONE.with("portico.counter_add").unwrap();
    assert!(lookup("portico.counter_add", counters_only).is_some());
    assert!(lookup("portico.verify_signature", counters_only).is_none());
    assert!(lookup("portico.nothing", Allowed::default()).is_none());
    assert!(Allowed::NONE.with("portico.nothing").is_none());
    assert_eq!(
        counters_only.names().collect::<Vec<_>>(),
        ["portico.counter_add"]
    );
}

#[test]
fn every_algorithm_accepts_its_own_signature_parsed_or_cached() {
    let cache = KeyCache::default();
    for alg in ALL {
        let (key, sig) = sign(alg, 0, MESSAGE);
        let call = args(alg, &key, MESSAGE, &sig);
        // The second call finds the parsed key in the cache.
        assert_eq!(verify_signature(&cache, &call), valid(), "{alg}");
        assert_eq!(verify_signature(&cache, &call), valid(), "{alg} (cached)");
    }
    // An empty message is a message.
    for alg in ALL {
        let (key, sig) = sign(alg, 0, b"");
        assert_eq!(verify(alg, &key, b"", &sig), valid(), "{alg}");
    }
}

#[test]
fn one_flipped_bit_in_the_message_or_the_signature_is_invalid() {
    for alg in ALL {
        let (key, sig) = sign(alg, 0, MESSAGE);
        let bits = MESSAGE.len() * 8;
        for bit in [0, 1, bits / 2, bits - 1] {
            let message = flip_bit(MESSAGE, bit);
            assert_eq!(
                verify(alg, &key, &message, &sig),
                invalid(),
                "{alg} message bit {bit}"
            );
        }
        let bits = sig.len() * 8;
        for bit in [0, 7, bits / 2, bits - 1] {
            let sig = flip_bit(&sig, bit);
            assert_eq!(
                verify(alg, &key, MESSAGE, &sig),
                invalid(),
                "{alg} signature bit {bit}"
            );
        }
    }
}

#[test]
fn another_key_of_the_same_family_is_invalid() {
    for alg in ALL {
        let (_, sig) = sign(alg, 0, MESSAGE);
        let (other_key, _) = sign(alg, 1, MESSAGE);
        assert_eq!(verify(alg, &other_key, MESSAGE, &sig), invalid(), "{alg}");
    }
}

#[test]
fn a_signature_of_the_wrong_length_is_invalid_not_malformed() {
    for alg in ALL {
        let (key, sig) = sign(alg, 0, MESSAGE);
        let longer = [sig.as_slice(), &[0]].concat();
        for sig in [&[][..], &sig[..sig.len() - 1], &sig[1..], &longer] {
            assert_eq!(verify(alg, &key, MESSAGE, sig), invalid(), "{alg}");
        }
    }
}

#[test]
fn the_same_key_under_another_algorithm_of_its_family_is_invalid() {
    // One cache for all: a key parsed for RS256 must not serve PS256, nor ES256's point ES384.
    let cache = KeyCache::default();
    for (signed, claimed) in [
        ("RS256", "PS256"),
        ("PS256", "RS256"),
        ("RS256", "RS384"),
        ("PS384", "PS512"),
        ("HS256", "HS384"),
    ] {
        let (key, sig) = sign(signed, 0, MESSAGE);
        assert_eq!(
            verify_signature(&cache, &args(signed, &key, MESSAGE, &sig)),
            valid()
        );
        assert_eq!(
            verify_signature(&cache, &args(claimed, &key, MESSAGE, &sig)),
            invalid(),
            "signed {signed}, claimed {claimed}"
        );
    }
}

#[test]
fn a_key_of_another_family_is_invalid_or_a_bad_argument_never_a_panic() {
    for alg in ALL {
        let (_, sig) = sign(alg, 0, MESSAGE);
        for other in ALL {
            let (key, _) = sign(other, 0, MESSAGE);
            if family(alg) == family(other) {
                continue;
            }
            let got = verify(alg, &key, MESSAGE, &sig);
            assert!(
                got == invalid() || got == Err(Error::BadArgument),
                "{alg} with a {other} key: {got:?}"
            );
        }
    }
    // The cases the SDK is most likely to get wrong, pinned down.
    let (rsa, _) = sign("RS256", 0, MESSAGE);
    let (p256, es256) = sign("ES256", 0, MESSAGE);
    let (p384, _) = sign("ES384", 0, MESSAGE);
    let (hs256_key, hs256) = sign("HS256", 0, MESSAGE);
    // Any bytes are an HMAC secret: the classic RS256 → HS256 confusion just fails to verify.
    assert_eq!(verify("HS256", &rsa, MESSAGE, &hs256), invalid());
    assert_eq!(
        verify("ES256", &p384, MESSAGE, &es256),
        Err(Error::BadArgument)
    );
    assert_eq!(
        verify("ES384", &p256, MESSAGE, &es256),
        Err(Error::BadArgument)
    );
    assert_eq!(
        verify("RS256", &p256, MESSAGE, &es256),
        Err(Error::BadArgument)
    );
    assert_eq!(
        verify("EdDSA", &p256, MESSAGE, &es256),
        Err(Error::BadArgument)
    );
    assert_eq!(
        verify("ES256", &hs256_key, MESSAGE, &hs256),
        Err(Error::BadArgument)
    );
}

#[test]
fn truncated_arguments_are_a_bad_argument_until_only_the_signature_is_short() {
    for alg in ALL {
        let (key, sig) = sign(alg, 0, MESSAGE);
        let full = args(alg, &key, MESSAGE, &sig);
        let header = full.len() - sig.len();
        let cache = KeyCache::default();
        for len in 0..full.len() {
            let got = verify_signature(&cache, &full[..len]);
            // Once the message is whole, a shorter tail is a shorter (wrong) signature.
            let want = if len < header {
                Err(Error::BadArgument)
            } else {
                invalid()
            };
            assert_eq!(got, want, "{alg} truncated to {len} of {}", full.len());
        }
        assert_eq!(verify_signature(&cache, &full), valid(), "{alg}");
    }
}

#[test]
fn lengths_past_the_end_are_a_bad_argument() {
    let (key, sig) = sign("ES256", 0, MESSAGE);
    let full = args("ES256", &key, MESSAGE, &sig);
    let key_len_at = 1 + 5;
    let msg_len_at = key_len_at + 4 + key.len();
    for (at, len) in [
        (key_len_at, u32::MAX),
        (key_len_at, (full.len() - key_len_at - 4 + 1) as u32),
        (msg_len_at, u32::MAX),
        (msg_len_at, (full.len() - msg_len_at - 4 + 1) as u32),
    ] {
        let mut call = full.clone();
        call[at..at + 4].copy_from_slice(&len.to_le_bytes());
        assert_eq!(
            verify_signature(&KeyCache::default(), &call),
            Err(Error::BadArgument),
            "length {len} at {at}"
        );
    }
    let cache = KeyCache::default();
    assert_eq!(
        verify_signature(&cache, &[200, b'H', b'S']),
        Err(Error::BadArgument)
    );
}

#[test]
fn an_unknown_algorithm_is_a_bad_argument() {
    let (key, sig) = sign("HS256", 0, MESSAGE);
    for alg in [
        "", "none", "None", "hs256", "HS256 ", " HS256", "HS256\0", "HS", "HS1", "ES512", "RS1",
        "PS256K", "Ed25519", "EDDSA", "ES256K",
    ] {
        assert_eq!(
            verify(alg, &key, MESSAGE, &sig),
            Err(Error::BadArgument),
            "{alg:?}"
        );
    }
}

#[test]
fn malformed_keys_are_a_bad_argument() {
    let (rsa, rs256) = sign("RS256", 0, MESSAGE);
    let n_len = u32::from_le_bytes(rsa[..4].try_into().unwrap()) as usize;
    let (n, e) = rsa[4..].split_at(n_len);
    let f4 = [1, 0, 1];
    let mut even = n.to_vec();
    even[n_len - 1] &= 0xfe;
    let odd = |len: usize| {
        let mut x = vec![0xff; len];
        x[0] = 0xc1;
        x
    };
    let bad = [
        ("1024-bit modulus", rsa_key(&odd(128), &f4)),
        (
            "2047-bit modulus",
            rsa_key(&[&[0x7f][..], &odd(255)].concat(), &f4),
        ),
        ("8200-bit modulus", rsa_key(&odd(1025), &f4)),
        ("even modulus", rsa_key(&even, &f4)),
        ("no exponent", rsa_key(n, &[])),
        ("exponent 1", rsa_key(n, &[1])),
        ("even exponent", rsa_key(n, &[1, 0, 0])),
        ("34-bit exponent", rsa_key(n, &[3, 0, 0, 0, 1])),
        ("no modulus", rsa_key(&[], e)),
        (
            "n_len past the key",
            [&(n.len() as u32 + 4).to_le_bytes()[..], n, e].concat(),
        ),
        ("n_len cut short", rsa[..3].to_vec()),
        ("empty", Vec::new()),
    ];
    for (what, key) in &bad {
        assert_eq!(
            verify("RS256", key, MESSAGE, &rs256),
            Err(Error::BadArgument),
            "{what}"
        );
    }
    // Leading zeros change nothing about the integer, so they are accepted.
    let padded = rsa_key(&[&[0, 0][..], n].concat(), &[&[0][..], e].concat());
    assert_eq!(verify("RS256", &padded, MESSAGE, &rs256), valid());

    let (p256, es256) = sign("ES256", 0, MESSAGE);
    let mut compressed = vec![0x02 | (p256[64] & 1)];
    compressed.extend_from_slice(&p256[1..33]);
    let bad = [
        ("compressed point", compressed),
        ("no 0x04", p256[1..].to_vec()),
        ("0x05 prefix", [&[0x05][..], &p256[1..]].concat()),
        ("off the curve", flip_bit(&p256, 64 * 8)),
        ("one byte short", p256[..64].to_vec()),
        ("one byte long", [&p256[..], &[0]].concat()),
        ("point at infinity", vec![0x00]),
    ];
    for (what, key) in &bad {
        assert_eq!(
            verify("ES256", key, MESSAGE, &es256),
            Err(Error::BadArgument),
            "{what}"
        );
    }

    let (ed, eddsa) = sign("EdDSA", 0, MESSAGE);
    for key in [&ed[..31], &[&ed[..], &[0]].concat()[..], &[]] {
        assert_eq!(
            verify("EdDSA", key, MESSAGE, &eddsa),
            Err(Error::BadArgument)
        );
    }

    // An empty secret would let anyone sign.
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, b""), MESSAGE);
    assert_eq!(
        verify("HS256", b"", MESSAGE, tag.as_ref()),
        Err(Error::BadArgument)
    );
}

#[test]
fn the_cache_stays_bounded_and_right() {
    let cache = KeyCache::default();
    let slot = ALGORITHMS.iter().position(|(n, _)| *n == "EdDSA").unwrap();
    let pairs: Vec<_> = (0..MAX_KEYS_PER_ALGORITHM + 20)
        .map(|_| Ed25519KeyPair::generate().unwrap())
        .collect();
    for round in 0..2 {
        for pair in &pairs {
            let key = pair.public_key().as_ref();
            let sig = pair.sign(MESSAGE);
            let call = args("EdDSA", key, MESSAGE, sig.as_ref());
            assert_eq!(verify_signature(&cache, &call), valid(), "round {round}");
            let tampered = args("EdDSA", key, b"other", sig.as_ref());
            assert_eq!(
                verify_signature(&cache, &tampered),
                invalid(),
                "round {round}"
            );
        }
        let len = cache.slots[slot].read().unwrap().len();
        assert_eq!(len, MAX_KEYS_PER_ALGORITHM);
    }
    // A key that fails to parse is not remembered.
    let _ = verify_signature(&cache, &args("ES256", &[0x04; 65], MESSAGE, &[0; 64]));
    let es256 = ALGORITHMS.iter().position(|(n, _)| *n == "ES256").unwrap();
    assert!(cache.slots[es256].read().unwrap().is_empty());
}

#[test]
fn random_and_mutated_arguments_never_panic() {
    let mut rng = fastrand::Rng::with_seed(7);
    let cache = KeyCache::default();
    let known: Vec<Vec<u8>> = ALL
        .iter()
        .map(|alg| {
            let (key, sig) = sign(alg, 0, MESSAGE);
            args(alg, &key, MESSAGE, &sig)
        })
        .collect();
    for _ in 0..2000 {
        let mut call = known[rng.usize(..known.len())].clone();
        for _ in 0..rng.usize(1..4) {
            let at = rng.usize(..call.len());
            call[at] = rng.u8(..);
        }
        call.truncate(rng.usize(..=call.len()));
        let got = verify_signature(&cache, &call);
        assert!(matches!(got, Ok(ref v) if v.len() == 1) || got == Err(Error::BadArgument));
    }
    for _ in 0..2000 {
        let len = rng.usize(..64);
        let call: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        let got = verify_signature(&cache, &call);
        assert!(matches!(got, Ok(ref v) if v.len() == 1) || got == Err(Error::BadArgument));
    }
}

/// µs per verification through the foreign function (cached key, and a fresh cache so the key
/// is parsed every time) against aws-lc-rs directly (pre-parsed key, and parsing every time).
/// Run in release: `cargo test --release -p portico --lib verify::tests::timing -- --ignored
/// --nocapture`.
#[test]
#[ignore = "a measurement, not a test; run in release"]
fn timing() {
    use std::hint::black_box;
    use std::time::Instant;

    /// The best of ten rounds, so that other work on a shared machine counts for little.
    fn micros(iterations: u32, mut f: impl FnMut()) -> f64 {
        let round = (iterations / 10).max(1);
        (0..=10)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..round {
                    f();
                }
                start.elapsed().as_secs_f64() * 1e6 / f64::from(round)
            })
            .skip(1)
            .fold(f64::INFINITY, f64::min)
    }

    for (alg, public, iterations) in [
        (
            "RS256",
            Public::Rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
            5000,
        ),
        (
            "PS256",
            Public::Rsa(&signature::RSA_PSS_2048_8192_SHA256),
            5000,
        ),
        (
            "ES256",
            Public::Ecdsa(&signature::ECDSA_P256_SHA256_FIXED, 32),
            5000,
        ),
        (
            "ES384",
            Public::Ecdsa(&signature::ECDSA_P384_SHA384_FIXED, 48),
            2000,
        ),
        ("EdDSA", Public::Ed25519, 5000),
    ] {
        let (key, sig) = sign(alg, 0, MESSAGE);
        let call = args(alg, &key, MESSAGE, &sig);
        let parsed = parse_public_key(&public, &key).unwrap();
        let cache = KeyCache::default();
        let cached = micros(iterations, || {
            assert_eq!(verify_signature(&cache, black_box(&call)), Ok(vec![1]));
        });
        let uncached = micros(iterations, || {
            let cache = KeyCache::default();
            assert_eq!(verify_signature(&cache, black_box(&call)), Ok(vec![1]));
        });
        let direct = micros(iterations, || {
            assert!(parsed.verify_sig(black_box(MESSAGE), &sig).is_ok());
        });
        let direct_parse = micros(iterations, || {
            let parsed = parse_public_key(&public, black_box(&key)).unwrap();
            assert!(parsed.verify_sig(black_box(MESSAGE), &sig).is_ok());
        });
        let parse = micros(iterations, || {
            black_box(parse_public_key(&public, black_box(&key)).unwrap());
        });
        println!(
            "{alg}: foreign cached {cached:.1} µs, foreign uncached {uncached:.1} µs, \
             aws-lc-rs parsed key {direct:.1} µs, aws-lc-rs parse+verify {direct_parse:.1} µs, \
             parse alone {parse:.1} µs"
        );
    }
    for (alg, algorithm) in [("HS256", hmac::HMAC_SHA256), ("HS512", hmac::HMAC_SHA512)] {
        let (key, sig) = sign(alg, 0, MESSAGE);
        let call = args(alg, &key, MESSAGE, &sig);
        let cache = KeyCache::default();
        let foreign = micros(100_000, || {
            assert_eq!(verify_signature(&cache, black_box(&call)), Ok(vec![1]));
        });
        let keying = micros(100_000, || {
            black_box(hmac::Key::new(algorithm, black_box(&key)));
        });
        println!("{alg}: foreign {foreign:.2} µs, of which keying ~{keying:.2} µs");
    }
}
