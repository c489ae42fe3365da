//! The verifier against tokens minted here with `ring` (not with the
//! library that checks them): each algorithm family, each refusal reason.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use mist_plugin_jwt::Tokens;
use mist_sdk::{Authenticator, Rejection};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `header.claims` and the signer's signature of it.
fn token(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = sign(input.as_bytes());
    format!("{input}.{}", b64(&signature))
}

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-a-test-secret";

fn hs256(claims: &Value) -> String {
    token(&json!({"alg": "HS256", "typ": "JWT"}), claims, |m| {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
        ring::hmac::sign(&key, m).as_ref().to_vec()
    })
}

fn pem(tag: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {tag}-----\n{}\n-----END {tag}-----\n",
        lines.join("\n")
    )
}

struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Files {
        Files(tempfile::tempdir().unwrap())
    }

    fn write(&self, name: &str, contents: &[u8]) -> String {
        let path = self.0.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path.display().to_string()
    }
}

async fn open(uri: &str) -> Tokens {
    Tokens::open(uri).await.unwrap()
}

async fn rejection(store: &Tokens, token: &str) -> (Rejection, String) {
    let e = store.authenticate(token).await.unwrap_err();
    assert!(e.is_rejection(), "{e:?}");
    (e.rejection, e.error.message.to_string())
}

fn claims(tags: &[&str], exp_in: i64) -> Value {
    json!({"sub": "someone", "tags": tags, "exp": (now() as i64 + exp_in)})
}

#[tokio::test]
async fn an_hmac_token_grants_its_claim_until_exp_plus_leeway() {
    let files = Files::new();
    let secret = files.write("secret", &[SECRET, b"\n"].concat());
    let store = open(&format!("jwt://?secret-file={secret}&leeway=5s")).await;
    assert!(!store.keeps_tokens());
    let exp = now() + 60;
    let grant = store
        .authenticate(&hs256(&json!({"tags": ["b", "a", "b"], "exp": exp})))
        .await
        .unwrap();
    assert_eq!(grant.tag_strings(), ["a", "b"], "sorted, once each");
    assert_eq!(grant.expires_at_ms.into_option(), Some((exp + 5) * 1000));
    assert_eq!(
        store.tags(&hs256(&claims(&["x"], 60))).await.unwrap(),
        ["x"]
    );
    for register in [
        store.add_token("t", &[]).await,
        store.remove_token("t").await,
        store.add_tags("t", &[]).await,
        store.remove_tags("t", &[]).await,
    ] {
        assert_eq!(register.unwrap_err().kind, mist_sdk::ErrorKind::UNSUPPORTED);
    }
}

#[tokio::test]
async fn every_reason_is_told_apart() {
    let files = Files::new();
    let secret = files.write("secret", SECRET);
    let store = open(&format!(
        "jwt://?secret-file={secret}&leeway=0&aud=mist&iss=issuer"
    ))
    .await;
    let good = |extra: Value| {
        let mut c = json!({"tags": ["a"], "exp": now() + 60, "aud": "mist", "iss": "issuer"});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    assert!(store.authenticate(&hs256(&good(json!({})))).await.is_ok());
    let cases = [
        (hs256(&good(json!({"exp": now() - 10}))), Rejection::EXPIRED),
        (
            hs256(&good(json!({"nbf": now() + 100}))),
            Rejection::NOT_YET_VALID,
        ),
        (
            hs256(&good(json!({"aud": "other"}))),
            Rejection::WRONG_AUDIENCE,
        ),
        (
            hs256(&good(json!({"aud": null}))),
            Rejection::WRONG_AUDIENCE,
        ),
        (
            hs256(&good(json!({"iss": "mallory"}))),
            Rejection::WRONG_ISSUER,
        ),
        (hs256(&good(json!({"iss": null}))), Rejection::WRONG_ISSUER),
        (hs256(&good(json!({"exp": null}))), Rejection::MALFORMED),
        // A string where a number belongs must not skip the check.
        (hs256(&good(json!({"exp": "never"}))), Rejection::MALFORMED),
        (hs256(&good(json!({"nbf": "later"}))), Rejection::MALFORMED),
        (hs256(&good(json!({"tags": "a"}))), Rejection::MALFORMED),
        (hs256(&good(json!({"tags": [""]}))), Rejection::MALFORMED),
        (hs256(&good(json!({"tags": null}))), Rejection::MALFORMED),
        (
            token(&json!({"alg": "HS256"}), &good(json!({})), |_| vec![0; 32]),
            Rejection::BAD_SIGNATURE,
        ),
        (
            token(&json!({"alg": "none"}), &good(json!({})), |_| Vec::new()),
            Rejection::ALGORITHM,
        ),
        (
            token(&json!({"alg": "NONE"}), &good(json!({})), |_| Vec::new()),
            Rejection::ALGORITHM,
        ),
        (
            token(&json!({"alg": "RS256"}), &good(json!({})), |_| vec![1; 256]),
            Rejection::ALGORITHM,
        ),
        (
            token(&json!({"alg": "HS1024"}), &good(json!({})), |_| vec![1; 8]),
            Rejection::ALGORITHM,
        ),
        ("garbage".to_string(), Rejection::MALFORMED),
        ("a.b.c.d".to_string(), Rejection::MALFORMED),
        ("!!.??.**".to_string(), Rejection::MALFORMED),
        (format!("{}.e30.", b64(b"not json")), Rejection::MALFORMED),
        ("x".repeat(20_000), Rejection::MALFORMED),
    ];
    for (token, expected) in cases {
        let (reason, message) = rejection(&store, &token).await;
        assert_eq!(reason, expected, "{message}");
        assert!(
            !message.contains("someone")
                && !message.contains("mallory")
                && !message.contains(&token),
            "no claim value in {message:?}"
        );
    }
}

/// The SubjectPublicKeyInfo of a P-256 point and of an Ed25519 key: the
/// fixed DER prefix, then the key.
const P256_SPKI: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const ED25519_SPKI: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[tokio::test]
async fn public_keys_fix_the_algorithm() {
    let rng = SystemRandom::new();
    let files = Files::new();

    let ec_pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ec = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        ec_pkcs8.as_ref(),
        &rng,
    )
    .unwrap();
    let ec_pem = pem(
        "PUBLIC KEY",
        &[P256_SPKI, ec.public_key().as_ref()].concat(),
    );
    let ec_store = open(&format!(
        "jwt://?public-key={}",
        files.write("ec.pem", ec_pem.as_bytes())
    ))
    .await;
    let es256 = token(&json!({"alg": "ES256"}), &claims(&["a"], 60), |m| {
        ec.sign(&rng, m).unwrap().as_ref().to_vec()
    });
    assert_eq!(ec_store.tags(&es256).await.unwrap(), ["a"]);
    // The P-256 key only verifies ES256, whatever the header says.
    let es384 = token(&json!({"alg": "ES384"}), &claims(&["a"], 60), |m| {
        ec.sign(&rng, m).unwrap().as_ref().to_vec()
    });
    assert_eq!(rejection(&ec_store, &es384).await.0, Rejection::ALGORITHM);
    // An HMAC token "signed" with the public key's bytes: the confusion attack.
    let confused = token(&json!({"alg": "HS256"}), &claims(&["a"], 60), |m| {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, ec_pem.as_bytes());
        ring::hmac::sign(&key, m).as_ref().to_vec()
    });
    assert_eq!(
        rejection(&ec_store, &confused).await.0,
        Rejection::ALGORITHM
    );

    let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed = Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).unwrap();
    let ed_pem = pem(
        "PUBLIC KEY",
        &[ED25519_SPKI, ed.public_key().as_ref()].concat(),
    );
    let ed_store = open(&format!(
        "jwt://?public-key={}",
        files.write("ed.pem", ed_pem.as_bytes())
    ))
    .await;
    let eddsa = token(&json!({"alg": "EdDSA"}), &claims(&["e"], 60), |m| {
        ed.sign(m).as_ref().to_vec()
    });
    assert_eq!(ed_store.tags(&eddsa).await.unwrap(), ["e"]);
    // Signed by the EC key: a bad signature for the Ed25519 key.
    let other = token(&json!({"alg": "EdDSA"}), &claims(&["e"], 60), |m| {
        Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref())
            .unwrap()
            .sign(m)
            .as_ref()
            .to_vec()
    });
    assert_eq!(
        rejection(&ed_store, &other).await.0,
        Rejection::BAD_SIGNATURE
    );
}

#[tokio::test]
async fn unusable_key_files_stop_the_start_naming_them() {
    let files = Files::new();
    let err = |uri: String| async move {
        match Tokens::open(&uri).await {
            Ok(_) => panic!("{uri} opened"),
            Err(e) => e.message.to_string(),
        }
    };
    let missing = files.0.path().join("missing.pem").display().to_string();
    let message = err(format!("jwt://?public-key={missing}")).await;
    assert!(
        message.contains(&missing) && message.contains("cannot read"),
        "{message}"
    );
    let junk = files.write("junk.pem", b"hello");
    let message = err(format!("jwt://?public-key={junk}")).await;
    assert!(
        message.contains(&junk) && message.contains("not PEM"),
        "{message}"
    );
    let private = files.write(
        "private.pem",
        pem(
            "PRIVATE KEY",
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .unwrap()
                .as_ref(),
        )
        .as_bytes(),
    );
    let message = err(format!("jwt://?public-key={private}")).await;
    assert!(
        message.contains(&private) && message.contains("private key"),
        "{message}"
    );
    let short = files.write("short", b"tiny");
    let message = err(format!("jwt://?secret-file={short}")).await;
    assert!(
        message.contains(&short) && message.contains("too short"),
        "{message}"
    );
    let missing_secret = files.0.path().join("nope").display().to_string();
    let message = err(format!("jwt://?secret-file={missing_secret}")).await;
    assert!(message.contains(&missing_secret), "{message}");
}
