//! The cluster key: a secret every node shares, read from the file
//! `--cluster-key-file` names, with which each node signs every payload it
//! sends (HMAC-SHA256, `ring`) and checks every payload it receives.
//!
//! The file holds one key per line (blank lines and lines starting with
//! `#` are skipped), at least [`MIN_KEY_BYTES`] bytes each, at most two: the
//! first signs, both are accepted. Two keys exist only during a rotation
//! (docs/cluster.md, "Rotating the key"). Each key has an id, the first 32
//! bits of an HMAC of a fixed text under the key: a payload names the key
//! it was signed with, so a receiver checks one MAC, not two, and an id
//! says nothing about the key.
//!
//! Neither the key nor any part of it is ever shown: errors name the file
//! and the line.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use ring::hmac;

/// Shortest accepted key, in bytes (`openssl rand -hex 32` writes 64).
pub const MIN_KEY_BYTES: usize = 32;
/// Largest key file read: a key file is a few lines.
const MAX_FILE_BYTES: u64 = 64 << 10;
/// Bytes of a MAC.
pub const MAC_BYTES: usize = 32;

/// Why a key file cannot be used. Never holds the file's content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file cannot be read.
    #[error("cluster key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a few lines of text.
    #[error("cluster key file {path}: not a key file (larger than {MAX_FILE_BYTES} bytes, or not UTF-8 text)")]
    NotText {
        /// The file.
        path: PathBuf,
    },
    /// No key in it.
    #[error("cluster key file {path} holds no key")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// More than two keys.
    #[error("cluster key file {path} holds {count} keys: at most two (the signing key first, then the one being rotated in or out)")]
    TooMany {
        /// The file.
        path: PathBuf,
        /// How many.
        count: usize,
    },
    /// A key shorter than [`MIN_KEY_BYTES`].
    #[error("cluster key file {path}, line {line}: a key must be at least {MIN_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`)")]
    TooShort {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
    },
    /// Two different keys with the same id (one chance in four billion).
    #[error("cluster key file {path}: its two keys have the same id; make a new key")]
    SameId {
        /// The file.
        path: PathBuf,
    },
}

/// One key and its id.
struct Key {
    id: u32,
    mac: hmac::Key,
}

impl Key {
    fn new(secret: &[u8]) -> Key {
        let mac = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let tag = hmac::sign(&mac, b"mist cluster key id");
        let mut id = [0u8; 4];
        id.copy_from_slice(&tag.as_ref()[..4]);
        // 0 means "no key" on the wire.
        let id = u32::from_be_bytes(id).max(1);
        Key { id, mac }
    }
}

/// The keys a node signs and checks payloads with.
pub struct ClusterKeys {
    /// The first key signs; every key is accepted.
    keys: Vec<Key>,
}

impl fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self.keys.iter().map(|k| format!("{:08x}", k.id)).collect();
        write!(f, "ClusterKeys(ids {})", ids.join(", "))
    }
}

impl ClusterKeys {
    /// Reads the key file at `path`. On Unix, a file others may read is
    /// used but warned about.
    pub fn load(path: &Path) -> Result<ClusterKeys, KeyError> {
        let read = |source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        #[cfg(unix)]
        if let Ok(meta) = file.metadata() {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    "cluster key file {} may be read by other users: chmod 600 it",
                    path.display()
                );
            }
        }
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        let text = match String::from_utf8(bytes) {
            Ok(text) if text.len() as u64 <= MAX_FILE_BYTES => text,
            _ => {
                return Err(KeyError::NotText {
                    path: path.to_path_buf(),
                })
            }
        };
        ClusterKeys::parse(&text, path)
    }

    /// Reads keys from the text of a key file (`path` only names it in
    /// errors).
    pub fn parse(text: &str, path: &Path) -> Result<ClusterKeys, KeyError> {
        let mut secrets: Vec<&str> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.len() < MIN_KEY_BYTES {
                return Err(KeyError::TooShort {
                    path: path.to_path_buf(),
                    line: n + 1,
                });
            }
            if !secrets.contains(&line) {
                secrets.push(line);
            }
        }
        match secrets.len() {
            0 => {
                return Err(KeyError::Empty {
                    path: path.to_path_buf(),
                })
            }
            1 | 2 => {}
            count => {
                return Err(KeyError::TooMany {
                    path: path.to_path_buf(),
                    count,
                })
            }
        }
        let keys: Vec<Key> = secrets.iter().map(|s| Key::new(s.as_bytes())).collect();
        if keys.len() == 2 && keys[0].id == keys[1].id {
            return Err(KeyError::SameId {
                path: path.to_path_buf(),
            });
        }
        Ok(ClusterKeys { keys })
    }

    /// The id of the signing key, as payloads carry it.
    pub fn signing_id(&self) -> u32 {
        self.keys[0].id
    }

    /// The ids of every accepted key, the signing key's first.
    pub fn ids(&self) -> Vec<u32> {
        self.keys.iter().map(|k| k.id).collect()
    }

    /// The MAC of `data` under the signing key.
    pub fn sign(&self, data: &[u8]) -> [u8; MAC_BYTES] {
        let tag = hmac::sign(&self.keys[0].mac, data);
        let mut mac = [0u8; MAC_BYTES];
        mac.copy_from_slice(tag.as_ref());
        mac
    }

    /// Whether the key named `id` is one of ours (`None`: it is not) and
    /// `mac` is its MAC of `data` (checked in constant time).
    pub fn verify(&self, id: u32, data: &[u8], mac: &[u8]) -> Option<bool> {
        let key = self.keys.iter().find(|k| k.id == id)?;
        Some(hmac::verify(&key.mac, data, mac).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef-key-a";
    const B: &str = "fedcba9876543210fedcba9876543210-key-b";

    fn parse(text: &str) -> Result<ClusterKeys, KeyError> {
        ClusterKeys::parse(text, Path::new("/etc/mist/cluster.key"))
    }

    #[test]
    fn one_key_signs_and_verifies() {
        let keys = parse(&format!("# the cluster key\n\n  {A}  \n")).unwrap();
        let mac = keys.sign(b"payload");
        assert_eq!(keys.verify(keys.signing_id(), b"payload", &mac), Some(true));
        assert_eq!(
            keys.verify(keys.signing_id(), b"payloaD", &mac),
            Some(false)
        );
        assert_eq!(keys.verify(keys.signing_id() ^ 1, b"payload", &mac), None);
        assert_ne!(keys.signing_id(), 0);
    }

    #[test]
    fn during_a_rotation_both_keys_are_accepted_and_the_first_signs() {
        let old = parse(A).unwrap();
        let new = parse(B).unwrap();
        let both = parse(&format!("{B}\n{A}\n")).unwrap();
        assert_eq!(both.signing_id(), new.signing_id());
        assert_eq!(both.ids(), [new.signing_id(), old.signing_id()]);
        for signer in [&old, &new] {
            let mac = signer.sign(b"x");
            assert_eq!(both.verify(signer.signing_id(), b"x", &mac), Some(true));
        }
        // A node that has the old key only cannot read the new one's.
        let mac = new.sign(b"x");
        assert_eq!(old.verify(new.signing_id(), b"x", &mac), None);
    }

    #[test]
    fn bad_files_are_refused_without_showing_a_key() {
        let short = "too-short-a-key";
        for (text, expected) in [
            ("", "holds no key"),
            ("# only a comment\n\n", "holds no key"),
            (short, "line 1: a key must be at least 32 bytes"),
            (&format!("{A}\n{B}\n{A}x\n"), "holds 3 keys"),
        ] {
            let e = parse(text).err().unwrap().to_string();
            assert!(e.contains(expected), "{e}");
            assert!(e.contains("/etc/mist/cluster.key"), "{e}");
            assert!(
                !e.contains(short) && !e.contains(A) && !e.contains(B),
                "{e}"
            );
        }
        // The same key twice is one key.
        assert_eq!(parse(&format!("{A}\n{A}\n")).unwrap().ids().len(), 1);
        let keys = parse(A).unwrap();
        assert!(!format!("{keys:?}").contains(A));
    }

    #[test]
    fn files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{A}\n")).unwrap();
        let keys = ClusterKeys::load(&path).unwrap();
        assert_eq!(keys.ids(), parse(A).unwrap().ids());
        std::fs::write(&path, vec![0xff; 40]).unwrap();
        assert!(matches!(
            ClusterKeys::load(&path),
            Err(KeyError::NotText { .. })
        ));
        std::fs::write(&path, vec![b'a'; 100_000]).unwrap();
        assert!(matches!(
            ClusterKeys::load(&path),
            Err(KeyError::NotText { .. })
        ));
        let missing = dir.path().join("missing");
        let e = ClusterKeys::load(&missing).err().unwrap().to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
