//! Loading a plugin library from disk, with `abi_stable`'s checks.

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use abi_stable::sabi_types::{VersionNumber, VersionStrings};
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
///
/// The sdk version the library was built against is read from its header
/// and checked with [`sdk_compatible`] before anything of the library runs
/// (its root module is built only after): `abi_stable`'s own check is
/// looser than the sdk's promise (it lets a library built against a newer
/// minor version into an older host).
pub fn load_library(path: &Path) -> Result<ModuleRef, LoadError> {
    if !path.exists() {
        return Err(LoadError::Missing {
            path: path.to_owned(),
        });
    }
    let header = lib_header_from_path(path).map_err(|e| classify(path, e))?;
    check_version(path, header.version_strings())?;
    header
        .init_root_module::<ModuleRef>()
        .map_err(|e| classify(path, e))
}

/// Whether a library built against mist-sdk `library` may be loaded by a
/// host built with mist-sdk `host`: the rule `mist_sdk`'s documentation
/// states ("Versions"). Patch versions never matter.
///
/// - `0.x`: the same minor version (`0.3.0` loads `0.3.7`, not `0.2.9` or
///   `0.4.0`): every `0.x` minor version may change the interface.
/// - From `1.0`: the same major version, and the library's minor version
///   at most the host's (a `1.4` host loads `1.0`..=`1.4`): a library built
///   against a newer minor may call what an older host lacks.
pub fn sdk_compatible(host: VersionNumber, library: VersionNumber) -> bool {
    if host.major == 0 || library.major == 0 {
        host.major == library.major && host.minor == library.minor
    } else {
        host.major == library.major && library.minor <= host.minor
    }
}

fn check_version(path: &Path, library: VersionStrings) -> Result<(), LoadError> {
    let incompatible = |reason: String| LoadError::Incompatible {
        path: path.to_owned(),
        reason,
    };
    let host = <ModuleRef as RootModule>::VERSION_STRINGS;
    let host = VersionNumber::new(host)
        .map_err(|e| incompatible(format!("this mist's own sdk version is unreadable: {e}")))?;
    let library = VersionNumber::new(library).map_err(|_| {
        incompatible(format!(
            "its sdk version {:?} is not a version number",
            library.version.as_str()
        ))
    })?;
    if sdk_compatible(host, library) {
        return Ok(());
    }
    let accepted = if host.major == 0 {
        format!("{}.{}.x", host.major, host.minor)
    } else {
        format!("{}.0 up to {}.{}.x", host.major, host.major, host.minor)
    };
    Err(incompatible(format!(
        "it uses mist-sdk {library}, and this mist (mist-sdk {host}) loads only plugins built against mist-sdk {accepted}"
    )))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32, patch: u32) -> VersionNumber {
        VersionNumber {
            major,
            minor,
            patch,
        }
    }

    #[test]
    fn zero_x_needs_the_same_minor_version() {
        let host = v(0, 2, 0);
        assert!(sdk_compatible(host, v(0, 2, 0)));
        assert!(sdk_compatible(host, v(0, 2, 7)));
        assert!(sdk_compatible(v(0, 2, 7), v(0, 2, 0)));
        assert!(!sdk_compatible(host, v(0, 1, 9)));
        // abi_stable 0.11 lets this one in; the sdk's promise does not.
        assert!(!sdk_compatible(host, v(0, 3, 0)));
        assert!(!sdk_compatible(host, v(1, 2, 0)));
        assert!(!sdk_compatible(v(1, 2, 0), v(0, 2, 0)));
    }

    #[test]
    fn from_one_the_library_minor_may_not_exceed_the_hosts() {
        let host = v(1, 4, 2);
        assert!(sdk_compatible(host, v(1, 0, 0)));
        assert!(sdk_compatible(host, v(1, 4, 9)));
        assert!(!sdk_compatible(host, v(1, 5, 0)));
        assert!(!sdk_compatible(host, v(2, 0, 0)));
        assert!(!sdk_compatible(v(2, 0, 0), v(1, 4, 0)));
    }

    #[test]
    fn a_refusal_names_both_versions_and_what_would_load() {
        let error = check_version(
            Path::new("/lib/libx.so"),
            VersionStrings {
                version: abi_stable::std_types::RStr::from_str("0.4.0"),
            },
        )
        .expect_err("0.4.0 is refused")
        .to_string();
        assert!(error.contains("/lib/libx.so"), "{error}");
        assert!(error.contains("mist-sdk 0.4.0"), "{error}");
        assert!(error.contains("built against mist-sdk 0.3.x"), "{error}");
        let error = check_version(
            Path::new("/lib/libx.so"),
            VersionStrings {
                version: abi_stable::std_types::RStr::from_str("two"),
            },
        )
        .expect_err("not a version")
        .to_string();
        assert!(error.contains("\"two\" is not a version number"), "{error}");
    }
}
