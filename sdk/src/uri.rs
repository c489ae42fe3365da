//! Reading listener URIs.

use crate::error::SdkError;

/// The `host:port` of a listener URI such as `tcp://127.0.0.1:1445` or
/// `ws://[::1]:8888/`, ready for `TcpListener::bind`. A path or query after
/// the authority is ignored; a missing port is an error.
///
/// ```
/// assert_eq!(mist_sdk::socket_address("tcp://127.0.0.1:1445").unwrap(), "127.0.0.1:1445");
/// assert_eq!(mist_sdk::socket_address("ws://[::1]:0/x?y").unwrap(), "[::1]:0");
/// assert!(mist_sdk::socket_address("tcp://127.0.0.1").is_err());
/// ```
pub fn socket_address(uri: &str) -> Result<String, SdkError> {
    let bad = |why: &str| SdkError::invalid_input(format!("bad listener URI {uri:?}: {why}"));
    let (_, rest) = uri
        .split_once("://")
        .ok_or_else(|| bad("expected scheme://host:port"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = authority
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty() && (!host.starts_with('[') || host.ends_with(']')))
        .ok_or_else(|| bad("expected host:port"))?;
    port.parse::<u16>()
        .map_err(|_| bad("the port must be a number from 0 to 65535"))?;
    Ok(format!("{host}:{port}"))
}
