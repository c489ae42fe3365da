//! Verification keys and the algorithms each one allows.
//!
//! The algorithm is fixed by the key, never by the token: a token's `alg`
//! header is only checked to be one the key allows. So an HMAC token can
//! never be checked against an RSA public key used as a secret (the
//! classic confusion), and `none` is never allowed.

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use p256::pkcs8::DecodePublicKey;

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file cannot be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The file holds no usable key.
    #[error("{path} is not a usable key: {why}")]
    NotAKey {
        /// The file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
}

/// A key and what it may verify.
pub struct VerifyKey {
    /// The key.
    pub key: DecodingKey,
    /// The algorithms a token checked with it may name.
    pub algorithms: Vec<Algorithm>,
    /// What it is, for error messages (`"an RSA public key"`).
    pub what: &'static str,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material: a secret must not reach a log.
        f.debug_struct("VerifyKey")
            .field("algorithms", &self.algorithms)
            .field("what", &self.what)
            .finish()
    }
}

const HMAC: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// The shortest HMAC secret accepted: RFC 7518 §3.2 asks for a key at
/// least as long as the hash (32 bytes for HS256).
pub const MIN_SECRET_BYTES: usize = 32;

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|error| KeyError::Read {
        path: path.display().to_string(),
        error,
    })
}

fn not_a_key(path: &Path, why: impl Into<String>) -> KeyError {
    KeyError::NotAKey {
        path: path.display().to_string(),
        why: why.into(),
    }
}

impl VerifyKey {
    /// An HMAC secret: the file's bytes, without a final line break (the
    /// one `echo` and editors add).
    pub fn secret_file(path: &Path) -> Result<VerifyKey, KeyError> {
        let mut secret = read(path)?;
        if secret.ends_with(b"\n") {
            secret.pop();
            if secret.ends_with(b"\r") {
                secret.pop();
            }
        }
        if secret.starts_with(b"-----BEGIN") {
            return Err(not_a_key(
                path,
                "it is a PEM file: give a public key with public-key=FILE, a secret with secret-file=FILE",
            ));
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(not_a_key(
                path,
                format!(
                    "an HMAC secret of {} bytes is too short to be safe: use at least {MIN_SECRET_BYTES} random bytes",
                    secret.len()
                ),
            ));
        }
        Ok(VerifyKey {
            key: DecodingKey::from_secret(&secret),
            algorithms: HMAC.to_vec(),
            what: "an HMAC secret",
        })
    }

    /// A public key in PEM (`BEGIN PUBLIC KEY`, or `BEGIN RSA PUBLIC KEY`).
    pub fn public_key_file(path: &Path) -> Result<VerifyKey, KeyError> {
        let pem_text = read(path)?;
        let block = pem::parse(&pem_text).map_err(|e| not_a_key(path, format!("not PEM ({e})")))?;
        match block.tag() {
            "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
            tag if tag.contains("PRIVATE") => {
                return Err(not_a_key(
                    path,
                    "it holds a private key: give the public key (openssl pkey -pubout)",
                ))
            }
            tag => {
                return Err(not_a_key(
                    path,
                    format!("a PEM {tag:?}, expected \"PUBLIC KEY\""),
                ))
            }
        }
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem_text) {
            return Ok(VerifyKey {
                key,
                algorithms: RSA.to_vec(),
                what: "an RSA public key",
            });
        }
        if let Ok(key) = DecodingKey::from_ed_pem(&pem_text) {
            return Ok(VerifyKey {
                key,
                algorithms: vec![Algorithm::EdDSA],
                what: "an Ed25519 public key",
            });
        }
        let der = block.contents();
        // An EC key's curve decides between ES256 and ES384.
        let curve = if p256::PublicKey::from_public_key_der(der).is_ok() {
            Some((Algorithm::ES256, "a P-256 public key"))
        } else if p384::PublicKey::from_public_key_der(der).is_ok() {
            Some((Algorithm::ES384, "a P-384 public key"))
        } else {
            None
        };
        match (curve, DecodingKey::from_ec_pem(&pem_text)) {
            (Some((algorithm, what)), Ok(key)) => Ok(VerifyKey {
                key,
                algorithms: vec![algorithm],
                what,
            }),
            (None, Ok(_)) => Err(not_a_key(
                path,
                "an EC key on a curve JWTs cannot use here: P-256 (ES256) or P-384 (ES384)",
            )),
            (_, Err(_)) => Err(not_a_key(
                path,
                "not an RSA, EC (P-256, P-384) or Ed25519 public key",
            )),
        }
    }

    /// A key of a JSON Web Key Set; `Err` says why it is skipped.
    pub fn from_jwk(jwk: &Jwk) -> Result<VerifyKey, String> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Err("it is for encryption (use: enc)".into());
        }
        let (algorithms, what): (Vec<Algorithm>, &'static str) = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => (RSA.to_vec(), "an RSA public key"),
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => (vec![Algorithm::ES256], "a P-256 public key"),
                EllipticCurve::P384 => (vec![Algorithm::ES384], "a P-384 public key"),
                _ => return Err("an EC key on a curve other than P-256 and P-384".into()),
            },
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                (vec![Algorithm::EdDSA], "an Ed25519 public key")
            }
            AlgorithmParameters::OctetKeyPair(_) => {
                return Err("an OKP key on a curve other than Ed25519".into())
            }
            // A secret published in a key set is no secret.
            AlgorithmParameters::OctetKey(_) => {
                return Err("a symmetric key (kty oct) has no place in a published key set".into())
            }
        };
        // A key that names its algorithm allows only that one.
        let algorithms = match jwk.common.key_algorithm {
            None => algorithms,
            Some(named) => match named_algorithm(named) {
                Some(alg) if algorithms.contains(&alg) => vec![alg],
                _ => return Err(format!("its alg {named:?} does not fit its key type")),
            },
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unreadable: {e}"))?;
        Ok(VerifyKey {
            key,
            algorithms,
            what,
        })
    }

    /// Whether a token naming `alg` may be checked with this key.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }
}

fn named_algorithm(named: KeyAlgorithm) -> Option<Algorithm> {
    Some(match named {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}
