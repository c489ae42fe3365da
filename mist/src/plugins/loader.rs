//! Loading a plugin library from disk, with `abi_stable`'s checks.

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError};
use mist_sdk::abi::ModuleRef;

/// Why a plugin could not be loaded or started. Every variant names the
/// library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file does not exist.
    #[error("plugin library {path}: no such file")]
    Missing {
        /// The library.
        path: PathBuf,
    },
    /// The file is not a shared library, or not one built with the sdk.
    #[error("plugin library {path} is not a Mist plugin: {reason}")]
    NotAPlugin {
        /// The library.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The library was built against an sdk this `mist` cannot use.
    #[error("plugin library {path} was built against an incompatible mist-sdk: {reason}")]
    Incompatible {
        /// The library.
        path: PathBuf,
        /// The version or layout mismatch.
        reason: String,
    },
    /// The plugin's `init` returned an error or panicked.
    #[error("plugin {name} ({source_name}) failed to start: {message}")]
    InitFailed {
        /// The plugin's name.
        name: String,
        /// Where it came from.
        source_name: String,
        /// What it said.
        message: String,
    },
    /// The plugin provides something another plugin or the broker provides.
    #[error("plugin {name} ({source_name}) refused: {reason}")]
    Clash {
        /// The plugin's name.
        name: String,
        /// Where it came from.
        source_name: String,
        /// What clashes.
        reason: String,
    },
}

/// Loads the library at `path` and checks that it is a plugin built against
/// a compatible sdk. The library stays loaded for the life of the process.
pub fn load_library(path: &Path) -> Result<ModuleRef, LoadError> {
    if !path.exists() {
        return Err(LoadError::Missing {
            path: path.to_owned(),
        });
    }
    let header = lib_header_from_path(path).map_err(|e| classify(path, e))?;
    header
        .init_root_module::<ModuleRef>()
        .map_err(|e| classify(path, e))
}

fn classify(path: &Path, error: LibraryError) -> LoadError {
    let path = path.to_owned();
    match error {
        LibraryError::OpenError { err, .. } => LoadError::NotAPlugin {
            path,
            reason: format!("it cannot be loaded as a shared library ({err})"),
        },
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin {
            path,
            reason: "it exports no Mist root module (was it built with mist_sdk::export_plugin!?)".into(),
        },
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::Incompatible {
            path,
            reason: format!(
                "it uses mist-sdk {actual_version}, this mist needs a version compatible with {expected_version}"
            ),
        },
        LibraryError::AbiInstability(e) => LoadError::Incompatible {
            path,
            reason: format!(
                "its plugin interface differs from this mist's: {}",
                first_lines(&e.to_string(), 6)
            ),
        },
        LibraryError::InvalidAbiHeader(e) => LoadError::Incompatible {
            path,
            reason: format!("it was built with an incompatible abi_stable ({e:?})"),
        },
        other => LoadError::NotAPlugin {
            path,
            reason: first_lines(&other.to_string(), 6),
        },
    }
}

/// Layout errors run to hundreds of lines; the first few say what differs.
fn first_lines(text: &str, n: usize) -> String {
    let mut lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(n + 1)
        .collect();
    let more = lines.len() > n;
    lines.truncate(n);
    let mut out = lines.join(" / ");
    if more {
        out.push_str(" / ...");
    }
    out
}
