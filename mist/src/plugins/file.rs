//! `plugins.toml`: which libraries to load, with their settings.
//!
//! ```toml
//! [[plugin]]
//! path = "target/release/libmist_tcp.so"   # relative to this file
//! required = true                          # refuse to start if it fails (default)
//! [plugin.settings]                        # handed to the plugin as JSON
//! greeting = "hello"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The parsed file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsFile {
    /// The libraries, in load order.
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<PluginEntry>,
}

/// One `[[plugin]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginEntry {
    /// The shared library; a relative path is relative to the file.
    pub path: PathBuf,
    /// Whether a failure to load it stops the start (otherwise it is
    /// skipped with an error in the log).
    #[serde(default = "required_by_default")]
    pub required: bool,
    /// The plugin's own settings.
    #[serde(default)]
    pub settings: toml::Table,
}

fn required_by_default() -> bool {
    true
}

/// Why `plugins.toml` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PluginsFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path} is not a valid plugins file: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
}

impl PluginsFile {
    /// Reads `path`, resolving library paths relative to its directory.
    pub fn read(path: &Path) -> Result<Self, PluginsFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PluginsFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut file: PluginsFile =
            toml::from_str(&text).map_err(|source| PluginsFileError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let base = path.parent().unwrap_or(Path::new(""));
        for entry in &mut file.plugins {
            if entry.path.is_relative() {
                entry.path = base.join(&entry.path);
            }
        }
        Ok(file)
    }
}

impl PluginEntry {
    /// The settings as the JSON object the plugin receives.
    pub fn settings_json(&self) -> String {
        serde_json::to_string(&self.settings).unwrap_or_else(|_| "{}".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_entries_relative_to_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("plugins.toml");
        std::fs::write(
            &path,
            "[[plugin]]\npath = \"lib/libx.so\"\nrequired = false\n[plugin.settings]\na = 1\n\n[[plugin]]\npath = \"/abs/liby.so\"\n",
        )
        .expect("write");
        let file = PluginsFile::read(&path).expect("read");
        assert_eq!(file.plugins.len(), 2);
        assert_eq!(file.plugins[0].path, dir.path().join("lib/libx.so"));
        assert!(!file.plugins[0].required);
        assert_eq!(file.plugins[0].settings_json(), r#"{"a":1}"#);
        assert_eq!(file.plugins[1].path, PathBuf::from("/abs/liby.so"));
        assert!(file.plugins[1].required);
    }

    #[test]
    fn rejects_unknown_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("plugins.toml");
        std::fs::write(&path, "[[plugin]]\npath = \"x.so\"\nrequird = true\n").expect("write");
        let err = PluginsFile::read(&path).expect_err("must fail");
        assert!(err.to_string().contains("requird"), "{err}");
    }
}
