//! Mist's PostgreSQL authenticator: `postgres://user:pass@host:port?db=NAME`
//! (a `/NAME` path works too). Tokens are kept as their SHA-256 digest (the
//! digest the cluster sends when a token changes), never in clear, in two
//! tables created if missing:
//!
//! ```sql
//! mist_token_digests     (digest BYTEA PRIMARY KEY)      -- SHA-256 of the token
//! mist_token_digest_tags (digest BYTEA REFERENCES mist_token_digests ON DELETE CASCADE,
//!                         tag TEXT, PRIMARY KEY (digest, tag))
//! ```
//!
//! Whoever reads the tables or a dump learns no token. The clear-text tables
//! of an older Mist (`mist_tokens`, `mist_token_tags`) are migrated when the
//! store is opened, once, in one transaction: their rows are copied as
//! digests (PostgreSQL's `sha256()`, PostgreSQL 11 or later) and the tables
//! dropped, with a log line saying how many tokens moved.
//!
//! Queries go through a small pool of connections (sqlx), with parameters
//! only. A broken connection is noticed before use and replaced, so the
//! store recovers by itself when the database comes back after a restart;
//! while it is down, calls fail with an `UNAVAILABLE` error that says so.
//!
//! ```no_run
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use mist_sdk::Authenticator;
//! let store = mist_plugin_postgres::Store::open("postgres://mist:pw@127.0.0.1:5432?db=mist")
//!     .await
//!     .unwrap();
//! store.add_token("t", &["a".into()]).await.unwrap();
//! assert!(store.may_use("t", &["a".into()]).await.unwrap());
//! # });
//! ```

use std::sync::Arc;
use std::time::Duration;

use mist_sdk::abi::ModuleRef;
use mist_sdk::{async_trait, Authenticator, Host, Plugin, SdkError};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Row};

/// How long a call waits for a connection before it reports the database
/// unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections in the pool at most.
const MAX_CONNECTIONS: u32 = 8;

/// How long the readiness check waits for `SELECT 1`.
const CHECK_TIMEOUT: Duration = Duration::from_millis(1500);

/// The plugin.
pub struct Postgres;

/// The root module, for linking the plugin into a host.
pub fn module() -> ModuleRef {
    mist_sdk::module::<Postgres>()
}

#[async_trait]
impl Plugin for Postgres {
    const NAME: &'static str = "postgres";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const AUTHENTICATORS: &'static [&'static str] = &["postgres", "postgresql"];

    fn init(_host: Host) -> Result<Self, SdkError> {
        Ok(Postgres)
    }

    async fn open_authenticator(&self, uri: &str) -> Result<Arc<dyn Authenticator>, SdkError> {
        Ok(Arc::new(Store::open(uri).await?))
    }
}

/// The store: a pool of connections to one database.
pub struct Store {
    pool: PgPool,
    /// `host:port/database`, for messages; never the password.
    place: String,
}

/// The connection options of a `postgres://` URI, and where it points.
fn options(uri: &str) -> Result<(PgConnectOptions, String), SdkError> {
    let usage = "expected postgres://user:pass@host:port?db=NAME";
    // Never echo the URI: it holds the password.
    let parsed = url::Url::parse(uri)
        .map_err(|e| SdkError::invalid_input(format!("bad PostgreSQL URI: {e}; {usage}")))?;
    let host = parsed.host_str().filter(|h| !h.is_empty()).ok_or_else(|| {
        SdkError::invalid_input(format!("the PostgreSQL URI has no host; {usage}"))
    })?;
    let port = parsed.port().unwrap_or(5432);
    let database = parsed
        .query_pairs()
        .find(|(key, _)| key == "db")
        .map(|(_, value)| value.into_owned())
        .or_else(|| Some(parsed.path().trim_start_matches('/').to_owned()))
        .filter(|db| !db.is_empty())
        .ok_or_else(|| {
            SdkError::invalid_input(format!("the PostgreSQL URI names no database; {usage}"))
        })?;
    // User info is percent-encoded (a `+` is a plus, not a space).
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut options = PgConnectOptions::new_without_pgpass()
        .host(host)
        .port(port)
        .database(&database)
        .application_name("mist")
        .disable_statement_logging();
    if !parsed.username().is_empty() {
        options = options.username(&decode(parsed.username()));
    }
    if let Some(password) = parsed.password() {
        options = options.password(&decode(password));
    }
    Ok((options, format!("{host}:{port}/{database}")))
}

const SCHEMA: &[&str] = &[
    // Two brokers starting at once must not race each other's CREATEs (or
    // migrations).
    "SELECT pg_advisory_xact_lock(7405321)",
    "CREATE TABLE IF NOT EXISTS mist_token_digests (
        digest BYTEA PRIMARY KEY CHECK (octet_length(digest) = 32)
    )",
    "CREATE TABLE IF NOT EXISTS mist_token_digest_tags (
        digest BYTEA NOT NULL REFERENCES mist_token_digests (digest) ON DELETE CASCADE,
        tag TEXT NOT NULL,
        PRIMARY KEY (digest, tag)
    )",
];

/// Whether the clear-text tables of an older Mist are there.
const HAS_CLEAR_TEXT: &str = "SELECT EXISTS (
    SELECT 1 FROM information_schema.columns
    WHERE table_schema = current_schema() AND table_name = 'mist_tokens'
        AND column_name = 'token'
) AS found";

/// Their rows as digests, then the tables gone (tags first: they refer to
/// the tokens).
const MIGRATE_TOKENS: &str = "INSERT INTO mist_token_digests (digest)
    SELECT sha256(convert_to(token, 'UTF8')) FROM mist_tokens ON CONFLICT DO NOTHING";
const HAS_CLEAR_TEXT_TAGS: &str = "SELECT to_regclass('mist_token_tags') IS NOT NULL AS found";
const MIGRATE_TAGS: &str = "INSERT INTO mist_token_digest_tags (digest, tag)
    SELECT sha256(convert_to(token, 'UTF8')), tag FROM mist_token_tags ON CONFLICT DO NOTHING";
const DROP_CLEAR_TEXT: &[&str] = &[
    "DROP TABLE IF EXISTS mist_token_tags",
    "DROP TABLE mist_tokens",
];

/// The SHA-256 of `token`: how the tables know it.
fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

impl Store {
    /// Connects to the database of `uri` and creates the tables if missing.
    /// An unreachable database is an `UNAVAILABLE` error.
    pub async fn open(uri: &str) -> Result<Store, SdkError> {
        let (options, place) = options(uri)?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(true)
            .connect_with(options)
            .await
            .map_err(|e| {
                SdkError::unavailable(format!("cannot connect to PostgreSQL at {place}: {e}"))
            })?;
        let store = Store { pool, place };
        let mut tx = store.pool.begin().await.map_err(|e| store.error(e))?;
        for statement in SCHEMA {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .map_err(|e| store.error(e))?;
        }
        let migrated = store.migrate(&mut tx).await?;
        tx.commit().await.map_err(|e| store.error(e))?;
        if let Some(count) = migrated {
            tracing::warn!(
                "PostgreSQL at {}: {count} clear-text token(s) migrated to SHA-256 digests \
                 (mist_token_digests); the tables mist_tokens and mist_token_tags are dropped \
                 (backups taken before this still hold the tokens)",
                store.place
            );
        }
        Ok(store)
    }

    /// Moves the clear-text tables of an older Mist into the digest tables,
    /// in `tx`; how many tokens, or `None` when there were no such tables.
    async fn migrate(&self, tx: &mut sqlx::PgConnection) -> Result<Option<u64>, SdkError> {
        let found: bool = sqlx::query(HAS_CLEAR_TEXT)
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get("found"))
            .map_err(|e| self.error(e))?;
        if !found {
            return Ok(None);
        }
        let count = sqlx::query(MIGRATE_TOKENS)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error(e))?
            .rows_affected();
        // The tags table may have been dropped by hand.
        let tags: bool = sqlx::query(HAS_CLEAR_TEXT_TAGS)
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get("found"))
            .map_err(|e| self.error(e))?;
        let statements = tags.then_some(MIGRATE_TAGS).into_iter();
        for statement in statements.chain(DROP_CLEAR_TEXT.iter().copied()) {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error(e))?;
        }
        Ok(Some(count))
    }

    /// A database error as the broker should see it. Messages name the
    /// database, never a token or the password.
    fn error(&self, e: sqlx::Error) -> SdkError {
        match e {
            sqlx::Error::Database(db) => {
                SdkError::other(format!("PostgreSQL at {}: {}", self.place, db.message()))
            }
            other => SdkError::unavailable(format!(
                "PostgreSQL at {} is unreachable: {other}",
                self.place
            )),
        }
    }

    async fn insert_tags(
        &self,
        tx: &mut sqlx::PgConnection,
        digest: &[u8],
        tags: &[String],
    ) -> Result<(), SdkError> {
        sqlx::query(
            "INSERT INTO mist_token_digest_tags (digest, tag) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(digest)
        .bind(tags)
        .execute(tx)
        .await
        .map(drop)
        .map_err(|e| self.error(e))
    }

    /// Locks the row of the token whose digest is `digest` in `tx`;
    /// `NOT_FOUND` when it is not registered.
    async fn lock_token(&self, tx: &mut sqlx::PgConnection, digest: &[u8]) -> Result<(), SdkError> {
        let found = sqlx::query("SELECT 1 FROM mist_token_digests WHERE digest = $1 FOR UPDATE")
            .bind(digest)
            .fetch_optional(tx)
            .await
            .map_err(|e| self.error(e))?;
        found.map(drop).ok_or_else(no_such_token)
    }
}

fn no_such_token() -> SdkError {
    // Never the token itself: error messages end up in logs.
    SdkError::not_found("no such token")
}

/// PostgreSQL's text cannot hold a NUL character; say so rather than fail
/// with an encoding error. (A token can: only its digest is stored.)
fn storable(tags: &[String]) -> Result<(), SdkError> {
    if tags.iter().any(|t| t.contains('\0')) {
        return Err(SdkError::invalid_input(
            "PostgreSQL cannot store a NUL character in a tag",
        ));
    }
    Ok(())
}

#[async_trait]
impl Authenticator for Store {
    async fn add_token(&self, token: &str, tags: &[String]) -> Result<(), SdkError> {
        storable(tags)?;
        let digest = digest(token);
        let mut tx = self.pool.begin().await.map_err(|e| self.error(e))?;
        let inserted = sqlx::query(
            "INSERT INTO mist_token_digests (digest) VALUES ($1) ON CONFLICT DO NOTHING",
        )
        .bind(&digest)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.error(e))?;
        if inserted.rows_affected() == 0 {
            return Err(SdkError::already_exists("the token is already registered"));
        }
        self.insert_tags(&mut tx, &digest, tags).await?;
        tx.commit().await.map_err(|e| self.error(e))
    }

    async fn remove_token(&self, token: &str) -> Result<(), SdkError> {
        let removed = sqlx::query("DELETE FROM mist_token_digests WHERE digest = $1")
            .bind(digest(token))
            .execute(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        if removed.rows_affected() == 0 {
            return Err(no_such_token());
        }
        Ok(())
    }

    async fn add_tags(&self, token: &str, tags: &[String]) -> Result<(), SdkError> {
        storable(tags)?;
        let digest = digest(token);
        let mut tx = self.pool.begin().await.map_err(|e| self.error(e))?;
        self.lock_token(&mut tx, &digest).await?;
        self.insert_tags(&mut tx, &digest, tags).await?;
        tx.commit().await.map_err(|e| self.error(e))
    }

    async fn remove_tags(&self, token: &str, tags: &[String]) -> Result<(), SdkError> {
        storable(tags)?;
        let digest = digest(token);
        let mut tx = self.pool.begin().await.map_err(|e| self.error(e))?;
        self.lock_token(&mut tx, &digest).await?;
        sqlx::query("DELETE FROM mist_token_digest_tags WHERE digest = $1 AND tag = ANY($2)")
            .bind(&digest)
            .bind(tags)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error(e))?;
        tx.commit().await.map_err(|e| self.error(e))
    }

    async fn tags(&self, token: &str) -> Result<Vec<String>, SdkError> {
        let row = sqlx::query(
            "SELECT array_remove(array_agg(g.tag ORDER BY g.tag), NULL) AS tags
             FROM mist_token_digests t LEFT JOIN mist_token_digest_tags g ON g.digest = t.digest
             WHERE t.digest = $1 GROUP BY t.digest",
        )
        .bind(digest(token))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.error(e))?
        .ok_or_else(no_such_token)?;
        row.try_get("tags").map_err(|e| self.error(e))
    }

    async fn may_use(&self, token: &str, tags: &[String]) -> Result<bool, SdkError> {
        if storable(tags).is_err() {
            return Ok(false); // no tag with a NUL is ever stored
        }
        let row = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM mist_token_digests WHERE digest = $1)
                AND (SELECT count(*) FROM mist_token_digest_tags
                     WHERE digest = $1 AND tag = ANY($2))
                    = (SELECT count(DISTINCT t) FROM unnest($2::text[]) AS t) AS allowed",
        )
        .bind(digest(token))
        .bind(tags)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        row.try_get("allowed").map_err(|e| self.error(e))
    }

    /// `SELECT 1` on a pooled connection, bounded by `CHECK_TIMEOUT`: a
    /// database that stopped answering (not only one that refuses
    /// connections) reads as unreachable.
    async fn check(&self) -> Result<(), SdkError> {
        let ping = sqlx::query("SELECT 1").execute(&self.pool);
        match tokio::time::timeout(CHECK_TIMEOUT, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(SdkError::unavailable(format!(
                "PostgreSQL at {} is unreachable: {e}",
                self.place
            ))),
            Err(_) => Err(SdkError::unavailable(format!(
                "PostgreSQL at {} did not answer within {} ms",
                self.place,
                CHECK_TIMEOUT.as_millis()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn uris_are_read_without_echoing_the_password() {
        let (_, place) = options("postgres://u:p%40ss@db.example:6543?db=tokens").unwrap();
        assert_eq!(place, "db.example:6543/tokens");
        let (options_, _) = options("postgres://us%2Ber+x:pw@h:1?db=d").unwrap();
        assert_eq!(options_.get_username(), "us+er+x");
        let (_, place) = options("postgresql://u@localhost/other").unwrap();
        assert_eq!(place, "localhost:5432/other");
        for bad in [
            "postgres://u:secret@host:1",
            "postgres://:secret@?db=x",
            "not a uri",
        ] {
            let error = options(bad).unwrap_err();
            assert!(!error.message.contains("secret"), "{}", error.message);
        }
    }
}
