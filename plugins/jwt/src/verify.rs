//! Checking one token: what it grants, or the reason it is refused.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use mist_sdk::{AuthError, Grant, Rejection};
use serde_json::{Map, Value};

use crate::jwks::{Jwks, Lookup};
use crate::keys::VerifyKey;

/// The largest token accepted. JWTs travel in HTTP headers, where 8 KiB
/// is a common limit; this leaves room, and bounds what one token (its
/// tag list, kept for the connection's life) may cost.
pub const MAX_TOKEN_BYTES: usize = 16 << 10;

/// 9999-12-31T23:59:59Z: a later `exp` is taken as this (a time must fit
/// the clock's arithmetic).
const LAST_SECOND: u64 = 253_402_300_799;

/// Where a token's key comes from.
pub enum Keys {
    /// One key for every token.
    Fixed(Arc<VerifyKey>),
    /// A key set, by `kid`.
    Set(Arc<Jwks>),
}

/// What a token must say, and the keys to check it with.
pub struct Verifier {
    pub(crate) keys: Keys,
    pub(crate) audience: Option<String>,
    pub(crate) issuer: Option<String>,
    pub(crate) claim: String,
    pub(crate) leeway: Duration,
}

fn refused(rejection: Rejection, message: impl Into<String>) -> AuthError {
    AuthError::rejected(rejection, message)
}

/// The part of the header that picks the key.
#[derive(serde::Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

impl Verifier {
    /// Checks `token`. Every message says what is wrong without repeating
    /// the token or any of its claims: it reaches the client, and may be
    /// logged.
    pub async fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(refused(
                Rejection::MALFORMED,
                format!(
                    "token too large: {} bytes, at most {MAX_TOKEN_BYTES}",
                    token.len()
                ),
            ));
        }
        let header = header(token)?;
        let alg = algorithm(&header.alg)?;
        let key = match &self.keys {
            Keys::Fixed(key) => key.clone(),
            Keys::Set(jwks) => match jwks.lookup(header.kid.as_deref()).await {
                Lookup::Found(key) => key,
                Lookup::Unknown { held } => {
                    return Err(refused(
                        Rejection::UNKNOWN_KEY,
                        match header.kid {
                            Some(_) => format!(
                                "unknown signing key: no key of the key set ({held} keys) has this token's kid"
                            ),
                            None => format!(
                                "unknown signing key: the token names no kid and the key set holds {held} keys"
                            ),
                        },
                    ));
                }
            },
        };
        if !key.allows(alg) {
            let allowed: Vec<String> = key.algorithms.iter().map(|a| format!("{a:?}")).collect();
            return Err(refused(
                Rejection::ALGORITHM,
                format!(
                    "algorithm {alg:?} not allowed: the key is {}, which verifies {}",
                    key.what,
                    allowed.join(", ")
                ),
            ));
        }
        let claims = self.decode(token, &key, alg)?;
        self.grant(&claims)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // A token that never expires could never be taken back.
        validation.set_required_spec_claims(&["exp"]);
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        validation
    }

    fn decode(
        &self,
        token: &str,
        key: &VerifyKey,
        alg: Algorithm,
    ) -> Result<Map<String, Value>, AuthError> {
        let decoded =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &self.validation(alg));
        decoded.map(|data| data.claims).map_err(|e| self.why(e))
    }

    fn why(&self, e: jsonwebtoken::errors::Error) -> AuthError {
        match e.kind() {
            JwtErrorKind::InvalidSignature
            | JwtErrorKind::InvalidEcdsaKey
            | JwtErrorKind::InvalidEddsaKey
            | JwtErrorKind::InvalidRsaKey(_)
            | JwtErrorKind::InvalidKeyFormat => refused(
                Rejection::BAD_SIGNATURE,
                "bad signature: the token was not signed with this broker's key",
            ),
            JwtErrorKind::ExpiredSignature => refused(Rejection::EXPIRED, "token expired"),
            JwtErrorKind::ImmatureSignature => refused(
                Rejection::NOT_YET_VALID,
                "token not valid yet: its nbf is in the future",
            ),
            JwtErrorKind::InvalidAudience => refused(
                Rejection::WRONG_AUDIENCE,
                "wrong audience: the token's aud does not name this broker",
            ),
            JwtErrorKind::InvalidIssuer => refused(
                Rejection::WRONG_ISSUER,
                "wrong issuer: the token's iss is not the one this broker trusts",
            ),
            JwtErrorKind::MissingRequiredClaim(claim) if claim == "aud" => refused(
                Rejection::WRONG_AUDIENCE,
                "wrong audience: the token has no aud claim",
            ),
            JwtErrorKind::MissingRequiredClaim(claim) if claim == "iss" => refused(
                Rejection::WRONG_ISSUER,
                "wrong issuer: the token has no iss claim",
            ),
            JwtErrorKind::MissingRequiredClaim(claim) => refused(
                Rejection::MALFORMED,
                format!("malformed token: no {claim} claim"),
            ),
            JwtErrorKind::InvalidClaimFormat(claim) => refused(
                Rejection::MALFORMED,
                format!("malformed token: its {claim} claim has the wrong type"),
            ),
            JwtErrorKind::InvalidAlgorithm | JwtErrorKind::InvalidAlgorithmName => refused(
                Rejection::ALGORITHM,
                "algorithm not allowed for this broker's key",
            ),
            // Base64, JSON, UTF-8, shape: the token is not well formed.
            // (The library's own words may quote the input: not passed on.)
            _ => refused(Rejection::MALFORMED, "malformed token"),
        }
    }

    /// The tags of the configured claim, until `exp` plus the leeway.
    fn grant(&self, claims: &Map<String, Value>) -> Result<Grant, AuthError> {
        let claim = &self.claim;
        let tags = match claims.get(claim) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(tag) if !tag.is_empty() => Ok(tag.clone()),
                    _ => Err(refused(
                        Rejection::MALFORMED,
                        format!("malformed token: its {claim} claim must be a list of non-empty strings"),
                    )),
                })
                .collect::<Result<std::collections::BTreeSet<String>, AuthError>>()?,
            Some(_) => {
                return Err(refused(
                    Rejection::MALFORMED,
                    format!("malformed token: its {claim} claim must be a list of non-empty strings"),
                ))
            }
            None => {
                return Err(refused(
                    Rejection::MALFORMED,
                    format!("malformed token: no {claim} claim (the tags it grants)"),
                ))
            }
        };
        // Validated by `decode` as a number of seconds.
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| refused(Rejection::MALFORMED, "malformed token: no exp claim"))?;
        let ends = exp.saturating_add(self.leeway.as_secs()).min(LAST_SECOND);
        let ends = UNIX_EPOCH + Duration::from_secs(ends);
        // The library's check is by whole seconds; the grant is by the
        // millisecond: in that last second, the token has already ended.
        if ends <= SystemTime::now() {
            return Err(refused(Rejection::EXPIRED, "token expired"));
        }
        Ok(Grant::new(tags).expiring_at(ends))
    }
}

/// The header, read before any key is chosen.
fn header(token: &str) -> Result<RawHeader, AuthError> {
    let malformed = |why: &str| refused(Rejection::MALFORMED, format!("malformed token: {why}"));
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            "a JWT is three base64url parts separated by dots",
        ));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed("its header is not base64url"))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| malformed("its header is not a JSON object with alg"))
}

fn algorithm(alg: &str) -> Result<Algorithm, AuthError> {
    if alg.eq_ignore_ascii_case("none") {
        return Err(refused(
            Rejection::ALGORITHM,
            "algorithm none not allowed: the token must be signed",
        ));
    }
    Algorithm::from_str(alg).map_err(|_| {
        refused(
            Rejection::ALGORITHM,
            "algorithm not supported: expected one of HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA",
        )
    })
}
