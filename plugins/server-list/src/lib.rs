//! A `--cluster` URI that names several servers:
//! `scheme://[user:pass@]host:port[/path],host:port,...[?params]`.
//!
//! Each address after the first is either a whole URI of the same scheme,
//! or a bare `[user:pass@]host:port` that takes the first address's
//! credentials and path when it names none (so `nats://u:p@a:4222,b:4222`
//! is `nats://u:p@a:4222` and `nats://u:p@b:4222`). The parameters
//! come once, after the last address, and apply to every server. A comma in
//! a password must be percent-encoded (`%2C`). One address is the list of
//! one: exactly the single-server URI it always was.
//!
//! Used by the redis and nats backplane plugins; not part of the sdk (a
//! backplane's URI is its own).
//!
//! ```
//! let (servers, parameters) =
//!     mist_server_list::split("nats://u:p@a:4222,b:4222?prefix=x", "nats", 4222).unwrap();
//! assert_eq!(servers[1].url.as_str(), "nats://u:p@b:4222");
//! assert_eq!(servers[1].place, "b:4222");
//! assert_eq!(parameters, [("prefix".to_string(), "x".to_string())]);
//! ```

use url::Url;

/// Why a list was refused. Never holds the URI: it may hold a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("bad URI: {0}")]
    Malformed(#[from] url::ParseError),
    #[error("not a {0}:// URI")]
    Scheme(&'static str),
    #[error("an address of the list is empty")]
    Empty,
    #[error("an address has no host")]
    NoHost,
    #[error("the parameters go once, after the last address")]
    ParametersNotLast,
    #[error("{0} is named twice")]
    Twice(String),
}

/// One server of the list: its URI (without parameters) and `host:port`
/// (for messages and identity; never the password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub url: Url,
    pub place: String,
}

/// The URI's `key=value` parameters, decoded, in order.
pub type Parameters = Vec<(String, String)>;

/// Splits `uri` into its servers (in the order given, each `host:port`
/// once) and its parameters; `default_port` fills a missing port.
pub fn split(
    uri: &str,
    scheme: &'static str,
    default_port: u16,
) -> Result<(Vec<Address>, Parameters), ListError> {
    let (list, query) = match uri.split_once('?') {
        Some((list, query)) => (list, Some(query)),
        None => (uri, None),
    };
    if query.is_some_and(|q| q.contains(',')) {
        return Err(ListError::ParametersNotLast);
    }
    let mut addresses: Vec<Address> = Vec::new();
    let mut first: Option<Url> = None;
    for part in list.split(',') {
        if part.trim().is_empty() {
            return Err(ListError::Empty);
        }
        let url = match &first {
            None => Url::parse(part)?,
            Some(_) if part.contains("://") => Url::parse(part)?,
            Some(first) => {
                let mut url = Url::parse(&format!("{scheme}://{part}"))?;
                if url.username().is_empty() && url.password().is_none() {
                    // Infallible for a URL with a host, which both have.
                    let _ = url.set_username(first.username());
                    let _ = url.set_password(first.password());
                }
                if matches!(url.path(), "" | "/") {
                    url.set_path(first.path());
                }
                url
            }
        };
        if !url.scheme().eq_ignore_ascii_case(scheme) {
            return Err(ListError::Scheme(scheme));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(ListError::NoHost)?;
        let place = format!("{host}:{}", url.port().unwrap_or(default_port));
        if addresses.iter().any(|a| a.place == place) {
            return Err(ListError::Twice(place));
        }
        if first.is_none() {
            first = Some(url.clone());
        }
        addresses.push(Address { url, place });
    }
    let parameters = match query {
        Some(query) => url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect(),
        None => Vec::new(),
    };
    Ok((addresses, parameters))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(uri: &str) -> Vec<String> {
        split(uri, "nats", 4222)
            .unwrap()
            .0
            .into_iter()
            .map(|a| a.place)
            .collect()
    }

    #[test]
    fn one_address_is_a_list_of_one() {
        let (addresses, parameters) =
            split("nats://u:p@10.0.0.1:7000/2?buffer=9&prefix=x", "nats", 4222).unwrap();
        assert_eq!(addresses.len(), 1);
        assert_eq!(addresses[0].url.as_str(), "nats://u:p@10.0.0.1:7000/2");
        assert_eq!(addresses[0].place, "10.0.0.1:7000");
        assert_eq!(
            parameters,
            [("buffer".into(), "9".into()), ("prefix".into(), "x".into())]
        );
    }

    #[test]
    fn whole_and_bare_addresses() {
        assert_eq!(
            places("nats://a:1,nats://b:2,c:3,d"),
            ["a:1", "b:2", "c:3", "d:4222"]
        );
        assert_eq!(places("nats://[::1]:1,[::1]:2"), ["[::1]:1", "[::1]:2"]);
    }

    #[test]
    fn bare_addresses_take_the_first_ones_credentials_and_path() {
        let (a, _) = split("nats://u:p@a:1/2,b:2,v:q@c:3/4,nats://d:4", "nats", 4222).unwrap();
        let urls: Vec<&str> = a.iter().map(|a| a.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "nats://u:p@a:1/2",
                "nats://u:p@b:2/2",
                "nats://v:q@c:3/4",
                "nats://d:4"
            ]
        );
    }

    #[test]
    fn bad_lists_are_refused_without_echoing_the_password() {
        for (bad, why) in [
            ("nats://a:1,", ListError::Empty),
            ("nats://a:1,,b:2", ListError::Empty),
            ("nats://a:1?buffer=1,b:2", ListError::ParametersNotLast),
            ("nats://a:1,redis://b:2", ListError::Scheme("nats")),
            ("redis://a:1", ListError::Scheme("nats")),
            ("nats://a:1,a:1", ListError::Twice("a:1".into())),
            ("nats://a,a:4222", ListError::Twice("a:4222".into())),
        ] {
            assert_eq!(split(bad, "nats", 4222).unwrap_err(), why, "{bad}");
        }
        for bad in ["nats://", "nats://a:1,b:port", "no", "nats://a:1,:2"] {
            assert!(split(bad, "nats", 4222).is_err(), "{bad}");
        }
        let e = split("nats://u:secret@a:1,b:x", "nats", 4222).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
