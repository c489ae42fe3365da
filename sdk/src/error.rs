//! The one error type that crosses the plugin boundary.

use std::fmt;

use abi_stable::{std_types::RString, StableAbi};

/// An error returned by a plugin to the host, or by the host to a plugin.
///
/// It carries a [`ErrorKind`] for the caller to act on and a message for the
/// person reading the log or the client reading the error reply.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SdkError {
    /// What went wrong, for code.
    pub kind: ErrorKind,
    /// What went wrong, for people. Never contains a token.
    pub message: RString,
}

/// The category of an [`SdkError`].
///
/// A number rather than an enum so that kinds can be added without breaking
/// the ABI; treat unknown values like [`ErrorKind::OTHER`].
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorKind(pub u8);

impl ErrorKind {
    /// Anything else.
    pub const OTHER: ErrorKind = ErrorKind(0);
    /// The request or configuration is malformed.
    pub const INVALID_INPUT: ErrorKind = ErrorKind(1);
    /// The thing asked for does not exist (an unknown token).
    pub const NOT_FOUND: ErrorKind = ErrorKind(2);
    /// The thing to create exists already (a registered token).
    pub const ALREADY_EXISTS: ErrorKind = ErrorKind(3);
    /// The caller may not do this.
    pub const PERMISSION_DENIED: ErrorKind = ErrorKind(4);
    /// A backing service is unreachable; retrying later may work.
    pub const UNAVAILABLE: ErrorKind = ErrorKind(5);
    /// The plugin does not provide what was asked for.
    pub const UNSUPPORTED: ErrorKind = ErrorKind(6);
    /// Plugin code panicked; the panic was caught at the boundary.
    pub const PANICKED: ErrorKind = ErrorKind(7);
    /// The caller gave no valid credentials (HTTP `401`). Since sdk 0.2.
    pub const UNAUTHENTICATED: ErrorKind = ErrorKind(8);
    /// The input is over a size limit (HTTP `413`). Since sdk 0.2.
    pub const TOO_LARGE: ErrorKind = ErrorKind(9);
    /// The broker is at a limit of its own (connections, shutting down):
    /// retry later (HTTP `503`). Since sdk 0.2.
    pub const OVERLOADED: ErrorKind = ErrorKind(10);
    /// The operation did not finish in time (HTTP `504`). Since sdk 0.2.
    pub const TIMED_OUT: ErrorKind = ErrorKind(11);

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::OTHER => "other",
            Self::INVALID_INPUT => "invalid input",
            Self::NOT_FOUND => "not found",
            Self::ALREADY_EXISTS => "already exists",
            Self::PERMISSION_DENIED => "permission denied",
            Self::UNAVAILABLE => "unavailable",
            Self::UNSUPPORTED => "unsupported",
            Self::PANICKED => "panicked",
            Self::UNAUTHENTICATED => "unauthenticated",
            Self::TOO_LARGE => "too large",
            Self::OVERLOADED => "overloaded",
            Self::TIMED_OUT => "timed out",
            _ => return None,
        })
    }
}

impl ErrorKind {
    /// The HTTP status an HTTP listener answers an error of this kind with.
    ///
    /// ```
    /// use mist_sdk::ErrorKind;
    /// assert_eq!(ErrorKind::PERMISSION_DENIED.http_status(), 403);
    /// assert_eq!(ErrorKind::UNAVAILABLE.http_status(), 503);
    /// ```
    pub fn http_status(self) -> u16 {
        match self {
            Self::INVALID_INPUT => 400,
            Self::UNAUTHENTICATED => 401,
            Self::PERMISSION_DENIED => 403,
            Self::NOT_FOUND => 404,
            Self::ALREADY_EXISTS => 409,
            Self::TOO_LARGE => 413,
            Self::UNSUPPORTED => 501,
            Self::UNAVAILABLE | Self::OVERLOADED => 503,
            Self::TIMED_OUT => 504,
            _ => 500,
        }
    }
}

impl fmt::Debug for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "kind {}", self.0),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl SdkError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        SdkError {
            kind,
            message: RString::from(message.into()),
        }
    }

    /// [`ErrorKind::INVALID_INPUT`].
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::INVALID_INPUT, message)
    }

    /// [`ErrorKind::NOT_FOUND`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NOT_FOUND, message)
    }

    /// [`ErrorKind::ALREADY_EXISTS`].
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ALREADY_EXISTS, message)
    }

    /// [`ErrorKind::PERMISSION_DENIED`].
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PERMISSION_DENIED, message)
    }

    /// [`ErrorKind::UNAVAILABLE`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::UNAVAILABLE, message)
    }

    /// [`ErrorKind::UNSUPPORTED`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::UNSUPPORTED, message)
    }

    /// [`ErrorKind::UNAUTHENTICATED`].
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::UNAUTHENTICATED, message)
    }

    /// [`ErrorKind::TOO_LARGE`].
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TOO_LARGE, message)
    }

    /// [`ErrorKind::OVERLOADED`].
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::OVERLOADED, message)
    }

    /// [`ErrorKind::TIMED_OUT`].
    pub fn timed_out(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TIMED_OUT, message)
    }

    /// [`ErrorKind::OTHER`].
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::OTHER, message)
    }

    /// A caught panic, with the panic's message when it was a string.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string payload".to_string());
        Self::new(ErrorKind::PANICKED, format!("plugin panicked: {what}"))
    }
}
