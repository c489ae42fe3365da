//! Mist's file authenticator: `scribble://?db=/dir`, after the scribble
//! database the original Mist used. Tokens live under `DIR/tokens/`, one
//! JSON document per token, so they survive a restart and can be read by a
//! person.
//!
//! - **No token is kept**: a document holds the SHA-256 of its token (hex,
//!   the digest the cluster sends when a token changes) and its tags,
//!   `{"sha256":"…","tags":[…]}`, and is found by that digest: whoever reads
//!   the directory or a backup of it learns no token. A store written by an
//!   older Mist (`{"token":"…","tags":[…]}`) is migrated when it is opened,
//!   once, document by document, with a log line saying how many.
//! - **Atomic**: a document is written to a temporary file (its name starts
//!   with `.`), fsynced, renamed over the old one, and the directory is
//!   fsynced; a crash leaves the old document or the new one, never half of
//!   one. Stale temporary files are removed at start.
//! - **Token names are not file names**: a document's file name is the
//!   SHA-256 of its token in hex, so any string is stored safely (no path
//!   traversal, no length limit, no clash between tokens that differ only in
//!   characters a file system folds). The digest inside the document is
//!   checked against the name on every read.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use mist_sdk::Authenticator;
//! let dir = tempfile::tempdir().unwrap();
//! let store = mist_plugin_scribble::Store::open(dir.path()).unwrap();
//! store.add_token("../../etc/passwd", &["a".into()]).await.unwrap();
//! assert_eq!(store.tags("../../etc/passwd").await.unwrap(), ["a"]);
//! # });
//! ```

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mist_sdk::abi::ModuleRef;
use mist_sdk::{async_trait, Authenticator, Host, Plugin, SdkError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The plugin.
pub struct Scribble;

/// The root module, for linking the plugin into a host.
pub fn module() -> ModuleRef {
    mist_sdk::module::<Scribble>()
}

#[async_trait]
impl Plugin for Scribble {
    const NAME: &'static str = "scribble";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const AUTHENTICATORS: &'static [&'static str] = &["scribble"];

    fn init(_host: Host) -> Result<Self, SdkError> {
        Ok(Scribble)
    }

    async fn open_authenticator(&self, uri: &str) -> Result<Arc<dyn Authenticator>, SdkError> {
        let db = db_dir(uri)?;
        let store = tokio::task::spawn_blocking(move || Store::open(&db))
            .await
            .map_err(|e| SdkError::other(format!("opening the store: {e}")))??;
        Ok(Arc::new(store))
    }
}

/// The `db` directory of a `scribble://?db=DIR` URI.
fn db_dir(uri: &str) -> Result<PathBuf, SdkError> {
    let usage = "expected scribble://?db=/path/to/dir";
    let parsed = url::Url::parse(uri).map_err(|e| {
        SdkError::invalid_input(format!("bad authenticator URI {uri:?}: {e}; {usage}"))
    })?;
    let db = parsed
        .query_pairs()
        .find(|(key, _)| key == "db")
        .map(|(_, value)| value.into_owned())
        .filter(|db| !db.is_empty())
        .ok_or_else(|| SdkError::invalid_input(format!("{uri:?} has no db parameter: {usage}")))?;
    Ok(PathBuf::from(db))
}

/// One token's document: its digest, never the token.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    /// The SHA-256 of the token, lowercase hex (the file's name too).
    sha256: String,
    tags: BTreeSet<String>,
}

/// A document as an older Mist wrote it, with the token in clear.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearText {
    token: String,
    tags: BTreeSet<String>,
}

/// What a file holds.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Digest(Document),
    ClearText(ClearText),
}

/// The SHA-256 of `token`, lowercase hex.
fn digest(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// The store: a directory of documents.
pub struct Store {
    files: Arc<Files>,
    /// Read-modify-write of a document happens under this lock, so that
    /// two admins setting tags at once both take effect.
    write: tokio::sync::Mutex<()>,
}

/// The directory and the blocking file operations on it.
struct Files {
    /// `DB/tokens`.
    dir: PathBuf,
}

/// Makes temporary file names unique within the process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Opens (creating it if needed) the store under `db`, checking that it
    /// can be written.
    pub fn open(db: &Path) -> Result<Store, SdkError> {
        let dir = db.join("tokens");
        let fail = |what: &str, e: io::Error| {
            SdkError::invalid_input(format!("{what} {}: {e}", dir.display()))
        };
        fs::create_dir_all(&dir).map_err(|e| fail("cannot create the token directory", e))?;
        for entry in fs::read_dir(&dir).map_err(|e| fail("cannot read", e))? {
            let entry = entry.map_err(|e| fail("cannot read", e))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                // A temporary file of a write that a crash interrupted.
                let _ = fs::remove_file(entry.path());
            }
        }
        let files = Files { dir: dir.clone() };
        let probe = files.temp_path("probe");
        File::create(&probe)
            .and_then(|mut f| f.write_all(b"{}"))
            .and_then(|()| fs::remove_file(&probe))
            .map_err(|e| fail("cannot write to", e))?;
        let migrated = files.migrate()?;
        if migrated > 0 {
            tracing::warn!(
                "scribble store {}: {migrated} clear-text token(s) migrated to SHA-256 digests; \
                 the files hold no token any more (backups taken before this still do)",
                dir.display()
            );
        }
        Ok(Store {
            files: Arc::new(files),
            write: tokio::sync::Mutex::new(()),
        })
    }

    /// Runs a blocking file operation on tokio's blocking threads; `change`
    /// says it writes, and must hold the write lock.
    async fn run<T: Send + 'static>(
        &self,
        change: bool,
        f: impl FnOnce(&Files) -> Result<T, SdkError> + Send + 'static,
    ) -> Result<T, SdkError> {
        let _guard = if change {
            Some(self.write.lock().await)
        } else {
            None
        };
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || f(&files))
            .await
            .map_err(|e| SdkError::other(format!("a file operation failed: {e}")))?
    }
}

impl Files {
    /// The file of the token whose digest is `sha256`.
    fn path_of(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.json"))
    }

    /// Rewrites every clear-text document as a digest one; how many there
    /// were. A document that cannot be read is left as it is, with a
    /// warning naming it (reading its token later reports it damaged).
    fn migrate(&self) -> Result<usize, SdkError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| self.unavailable(e))?;
        let mut migrated = 0;
        for entry in entries {
            let path = entry.map_err(|e| self.unavailable(e))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if !name.is_some_and(|n| n.ends_with(".json") && !n.starts_with('.')) {
                continue;
            }
            let bytes = fs::read(&path).map_err(|e| self.unavailable(e))?;
            match serde_json::from_slice::<Stored>(&bytes) {
                Ok(Stored::Digest(_)) => {}
                Ok(Stored::ClearText(old)) => {
                    let sha256 = digest(&old.token);
                    self.write(&sha256, &old.tags)?;
                    if path != self.path_of(&sha256) {
                        fs::remove_file(&path)
                            .and_then(|()| self.sync_dir())
                            .map_err(|e| self.unavailable(e))?;
                    }
                    migrated += 1;
                }
                Err(e) => tracing::warn!(
                    "scribble store: {} is not a token document ({e}); left as it is",
                    path.display()
                ),
            }
        }
        Ok(migrated)
    }

    fn temp_path(&self, name: &str) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!(".{name}.{}.{n}.tmp", std::process::id()))
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> SdkError {
        SdkError::unavailable(format!("the token store at {}: {e}", self.dir.display()))
    }

    /// The tags of the token whose digest is `sha256`, or `None` when it is
    /// not registered.
    fn read(&self, sha256: &str) -> Result<Option<BTreeSet<String>>, SdkError> {
        let bytes = match fs::read(self.path_of(sha256)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.unavailable(e)),
        };
        let stored: Stored = serde_json::from_slice(&bytes)
            .map_err(|e| self.unavailable(format!("a damaged document ({sha256}.json): {e}")))?;
        // A file that holds another digest (copied or renamed by hand) is
        // not this token's. A clear-text document appears only if an older
        // Mist wrote it after the migration; it is read as it is.
        let (held, tags) = match stored {
            Stored::Digest(document) => (document.sha256, document.tags),
            Stored::ClearText(old) => (digest(&old.token), old.tags),
        };
        Ok((held == sha256).then_some(tags))
    }

    /// Writes the document of the token whose digest is `sha256`,
    /// atomically.
    fn write(&self, sha256: &str, tags: &BTreeSet<String>) -> Result<(), SdkError> {
        let document = Document {
            sha256: sha256.to_owned(),
            tags: tags.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&document).map_err(|e| self.unavailable(e))?;
        let temp = self.temp_path("token");
        let written = File::create(&temp)
            .and_then(|mut file| {
                file.write_all(&bytes)?;
                file.sync_all()
            })
            .and_then(|()| fs::rename(&temp, self.path_of(sha256)))
            .and_then(|()| self.sync_dir());
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(self.unavailable(e));
        }
        Ok(())
    }

    /// Makes a rename or removal durable.
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

fn no_such_token() -> SdkError {
    // Never the token itself: error messages end up in logs.
    SdkError::not_found("no such token")
}

#[async_trait]
impl Authenticator for Store {
    async fn add_token(&self, token: &str, tags: &[String]) -> Result<(), SdkError> {
        let sha256 = digest(token);
        let tags: BTreeSet<String> = tags.iter().cloned().collect();
        self.run(true, move |store| {
            if store.path_of(&sha256).exists() {
                return Err(SdkError::already_exists("the token is already registered"));
            }
            store.write(&sha256, &tags)
        })
        .await
    }

    async fn remove_token(&self, token: &str) -> Result<(), SdkError> {
        let sha256 = digest(token);
        self.run(true, move |store| {
            if store.read(&sha256)?.is_none() {
                return Err(no_such_token());
            }
            fs::remove_file(store.path_of(&sha256))
                .and_then(|()| store.sync_dir())
                .map_err(|e| store.unavailable(e))
        })
        .await
    }

    async fn add_tags(&self, token: &str, tags: &[String]) -> Result<(), SdkError> {
        let sha256 = digest(token);
        let tags = tags.to_vec();
        self.run(true, move |store| {
            let mut held = store.read(&sha256)?.ok_or_else(no_such_token)?;
            held.extend(tags);
            store.write(&sha256, &held)
        })
        .await
    }

    async fn remove_tags(&self, token: &str, tags: &[String]) -> Result<(), SdkError> {
        let sha256 = digest(token);
        let tags = tags.to_vec();
        self.run(true, move |store| {
            let mut held = store.read(&sha256)?.ok_or_else(no_such_token)?;
            for tag in &tags {
                held.remove(tag);
            }
            store.write(&sha256, &held)
        })
        .await
    }

    async fn tags(&self, token: &str) -> Result<Vec<String>, SdkError> {
        let sha256 = digest(token);
        let held = self.run(false, move |files| files.read(&sha256)).await?;
        Ok(held.ok_or_else(no_such_token)?.into_iter().collect())
    }

    async fn may_use(&self, token: &str, tags: &[String]) -> Result<bool, SdkError> {
        let sha256 = digest(token);
        let held = self.run(false, move |files| files.read(&sha256)).await?;
        Ok(held.is_some_and(|held| tags.iter().all(|t| held.contains(t))))
    }

    /// The directory is there and a file can be written in it (it was not
    /// removed, remounted read-only or had its permissions changed).
    async fn check(&self) -> Result<(), SdkError> {
        self.run(false, |files| {
            let probe = files.temp_path("check");
            File::create(&probe)
                .and_then(|_| fs::remove_file(&probe))
                .map_err(|e| files.unavailable(format!("cannot write a file: {e}")))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| t.to_string()).collect()
    }

    #[tokio::test]
    async fn hostile_and_similar_tokens_are_stored_apart_inside_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tokens = [
            "../../escape",
            "/etc/passwd",
            ".",
            "..",
            "a/b",
            "a_b",
            "A_B",
            "nul\0byte",
            "ünïcødé",
            "",
            &"long".repeat(500),
        ];
        for (i, token) in tokens.iter().enumerate() {
            store
                .add_token(token, &tags(&[&i.to_string()]))
                .await
                .unwrap();
        }
        for (i, token) in tokens.iter().enumerate() {
            assert_eq!(
                store.tags(token).await.unwrap(),
                [i.to_string()],
                "{token:?}"
            );
        }
        // Everything is inside DB/tokens, and no file name shows a token.
        let entries: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1);
        let names: Vec<String> = fs::read_dir(dir.path().join("tokens"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), tokens.len());
        assert!(
            names.iter().all(|n| n.len() == 69 && n.ends_with(".json")),
            "{names:?}"
        );
    }

    #[tokio::test]
    async fn the_documents_survive_reopening_and_stale_temporary_files_go() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.add_token("t", &tags(&["b", "a"])).await.unwrap();
            store.add_tags("t", &tags(&["c"])).await.unwrap();
            store.remove_tags("t", &tags(&["a"])).await.unwrap();
            store.add_token("gone", &[]).await.unwrap();
            store.remove_token("gone").await.unwrap();
        }
        // A crash in the middle of a write leaves a temporary file.
        let stale = dir.path().join("tokens").join(".token.1.2.tmp");
        fs::write(&stale, b"{\"tok").unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!stale.exists());
        assert_eq!(store.tags("t").await.unwrap(), ["b", "c"]);
        assert_eq!(
            store.tags("gone").await.unwrap_err().kind,
            mist_sdk::ErrorKind::NOT_FOUND
        );
        let document: serde_json::Value =
            serde_json::from_slice(&fs::read(store.files.path_of(&digest("t"))).unwrap()).unwrap();
        assert_eq!(
            document,
            serde_json::json!({"sha256": digest("t"), "tags": ["b", "c"]})
        );
    }

    #[tokio::test]
    async fn no_file_holds_a_token_and_a_clear_text_store_is_migrated_once() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        fs::create_dir_all(&tokens).unwrap();
        // Two documents as an older Mist wrote them; one under a name that
        // is not its digest.
        fs::write(
            tokens.join(format!("{}.json", digest("old-secret-1"))),
            br#"{"token": "old-secret-1", "tags": ["a", "b"]}"#,
        )
        .unwrap();
        fs::write(
            tokens.join("renamed.json"),
            br#"{"token": "old-secret-2", "tags": []}"#,
        )
        .unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.tags("old-secret-1").await.unwrap(), ["a", "b"]);
        assert!(store.may_use("old-secret-2", &[]).await.unwrap());
        assert!(!tokens.join("renamed.json").exists());
        assert_eq!(store.files.migrate().unwrap(), 0, "migrated once");

        store
            .add_token("new-secret-3", &tags(&["c"]))
            .await
            .unwrap();
        store.add_tags("old-secret-1", &tags(&["d"])).await.unwrap();
        for entry in fs::read_dir(&tokens).unwrap() {
            let text = fs::read_to_string(entry.unwrap().path()).unwrap();
            assert!(!text.contains("secret"), "a token in {text}");
            assert!(!text.contains("\"token\""), "{text}");
        }
        assert_eq!(fs::read_dir(&tokens).unwrap().count(), 3);
    }

    #[tokio::test]
    async fn a_document_under_another_digest_is_not_that_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.add_token("mine", &tags(&["a"])).await.unwrap();
        // Copied by hand over another token's name.
        fs::copy(
            store.files.path_of(&digest("mine")),
            store.files.path_of(&digest("yours")),
        )
        .unwrap();
        assert!(!store.may_use("yours", &[]).await.unwrap());
        assert_eq!(
            store.tags("yours").await.unwrap_err().kind,
            mist_sdk::ErrorKind::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn concurrent_changes_all_take_effect() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        store.add_token("t", &[]).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..20 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.add_tags("t", &[format!("tag{i:02}")]).await.unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(store.tags("t").await.unwrap().len(), 20);
    }

    #[test]
    fn a_missing_db_or_an_unusable_directory_is_a_clear_error() {
        let error = db_dir("scribble://").unwrap_err();
        assert!(
            error.message.contains("no db parameter"),
            "{}",
            error.message
        );
        let error = db_dir("scribble://?db=").unwrap_err();
        assert!(
            error.message.contains("no db parameter"),
            "{}",
            error.message
        );
        assert_eq!(
            db_dir("scribble://?db=/x/y").unwrap(),
            PathBuf::from("/x/y")
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        fs::write(&file, b"").unwrap();
        let error = Store::open(&file).err().unwrap();
        assert!(
            error.message.contains("cannot create the token directory"),
            "{}",
            error.message
        );
    }

    #[tokio::test]
    async fn the_check_fails_while_the_directory_is_gone_and_heals() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.check().await.unwrap();
        let tokens = dir.path().join("tokens");
        fs::remove_dir_all(&tokens).unwrap();
        let error = store.check().await.unwrap_err();
        assert_eq!(error.kind, mist_sdk::ErrorKind::UNAVAILABLE);
        assert!(error.message.contains("cannot write"), "{}", error.message);
        fs::create_dir(&tokens).unwrap();
        store.check().await.unwrap();
        assert_eq!(
            fs::read_dir(&tokens).unwrap().count(),
            0,
            "no probe left behind"
        );
    }
}
