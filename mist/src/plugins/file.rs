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
    /// The shared library; a relative path is relative to the file's
    /// directory. Absolute once read.
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
    /// Reads `path`, resolving library paths relative to its directory,
    /// always into absolute paths: a bare `libx.so` handed to the dynamic
    /// loader would be looked up on the system's library search path
    /// (`LD_LIBRARY_PATH`, `/usr/lib`, ...), where a different library of
    /// the same name can be waiting.
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
        // `plugins.toml` (in the working directory) has the parent "".
        let file_path = std::path::absolute(path).map_err(|source| PluginsFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = file_path.parent().unwrap_or(Path::new("/"));
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
    fn a_bare_name_in_a_file_of_the_working_directory_becomes_an_absolute_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("plugins.toml"),
            "[[plugin]]\npath = \"libx.so\"\n",
        )
        .expect("write");
        let cwd = std::env::current_dir().expect("cwd");
        // The relative name of the file, as mist finds it by default.
        let relative = pathdiff(dir.path(), &cwd).join("plugins.toml");
        assert!(relative.is_relative());
        let file = PluginsFile::read(&relative).expect("read");
        assert!(
            file.plugins[0].path.is_absolute(),
            "{:?}",
            file.plugins[0].path
        );
        assert!(
            file.plugins[0].path.ends_with("libx.so")
                && file.plugins[0].path.components().count() > 1,
            "{:?}",
            file.plugins[0].path
        );
    }

    /// `to` relative to `from` (`../..` as needed).
    fn pathdiff(to: &Path, from: &Path) -> PathBuf {
        let common = to
            .components()
            .zip(from.components())
            .take_while(|(a, b)| a == b)
            .count();
        let mut out = PathBuf::new();
        for _ in from.components().skip(common) {
            out.push("..");
        }
        for part in to.components().skip(common) {
            out.push(part);
        }
        out
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
