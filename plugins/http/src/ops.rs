//! What an operator asks the HTTP listener: `/metrics`, `/healthz`,
//! `/readyz` and the dashboard.
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | the Prometheus text format (0.0.4); under an authenticator only with the server token, else `401` |
//! | `GET /healthz` | `200 ok` while the process serves |
//! | `GET /readyz` | `200` when every listener, the token store and the cluster backplane are up, else `503`; a JSON body names each |
//! | `GET /dashboard` (and `GET /` redirects there) | a live page of the figures with a console to subscribe and publish; protected like `/metrics` |
//!
//! The token is the `X-AUTH-TOKEN` header, `Authorization: Bearer TOKEN`,
//! or the password of `Authorization: Basic` (so that a browser can ask
//! for it: the dashboard answers `401` with `WWW-Authenticate: Basic`).
//!
//! A listener started with `?only=ops` in its URI (what the host's
//! `--metrics-listener` does) serves these endpoints and nothing else, for
//! deployments that keep the public listener off the monitoring network.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, LOCATION,
    WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use mist_sdk::{Broker, ErrorKind, Listener, SdkError};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::reply::{json_error, text, with_type, Body};

const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const PAGE: &str = include_str!("../dashboard/index.html");
const SCRIPT: &str = include_str!("../dashboard/app.js");
const STYLE: &str = include_str!("../dashboard/style.css");

/// Where the page's token goes, filled in for the one who presented it.
const TOKEN_SLOT: &str = "{{token}}";

/// The paths this module answers.
const PATHS: &[&str] = &[
    "/metrics",
    "/healthz",
    "/readyz",
    "/",
    "/dashboard",
    "/dashboard/app.js",
    "/dashboard/style.css",
];

/// Answers `request` if it is an operator's, else `None`. `console` says
/// whether this listener also serves the WebSocket the dashboard's console
/// uses.
pub(crate) async fn route(
    request: &Request<Incoming>,
    broker: &Broker,
    console: bool,
) -> Option<Response<Body>> {
    let path = request.uri().path();
    if !PATHS.contains(&path) {
        return None;
    }
    if request.method() != Method::GET {
        return Some(json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{} is not allowed on {path}", request.method()),
        ));
    }
    let token = request_token(request.headers());
    Some(match path {
        "/metrics" => metrics(broker, token.as_deref()),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readyz(broker).await,
        "/" => redirect("/dashboard"),
        "/dashboard" => dashboard(broker, token.as_deref(), console),
        "/dashboard/app.js" => asset(SCRIPT, "text/javascript; charset=utf-8"),
        _ => asset(STYLE, "text/css; charset=utf-8"),
    })
}

/// The token a request presents, from whichever header carries it.
fn request_token(headers: &HeaderMap) -> Option<String> {
    if let Some(token) = headers
        .get(mist_plugin_ws::TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        return Some(token.to_owned());
    }
    let authorization = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, credentials) = authorization.split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(credentials.to_owned())
    } else if scheme.eq_ignore_ascii_case("basic") {
        // `user:token`; the user name means nothing.
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        decoded.split_once(':').map(|(_, token)| token.to_owned())
    } else {
        None
    }
}

/// `401` asking for the server token, in a way a browser can answer.
fn unauthorized(error: &SdkError) -> Response<Body> {
    let mut response = json_error(StatusCode::UNAUTHORIZED, error.message.as_str());
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Basic realm="mist", charset="UTF-8""#),
    );
    response
}

fn refused(error: &SdkError) -> Response<Body> {
    match error.kind {
        // SPEC §9: no token and a wrong token are both a 401.
        ErrorKind::UNAUTHENTICATED | ErrorKind::PERMISSION_DENIED => unauthorized(error),
        kind => json_error(
            StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            error.message.as_str(),
        ),
    }
}

fn metrics(broker: &Broker, token: Option<&str>) -> Response<Body> {
    match broker.metrics(token) {
        Ok(body) => {
            let mut response = with_type(
                StatusCode::OK,
                crate::reply::full(body),
                METRICS_CONTENT_TYPE,
            );
            no_store(&mut response);
            response
        }
        Err(e) => refused(&e),
    }
}

async fn readyz(broker: &Broker) -> Response<Body> {
    let readiness = broker.readiness().await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = with_type(
        status,
        crate::reply::full(readiness.report.into_string()),
        "application/json",
    );
    no_store(&mut response);
    response
}

fn redirect(to: &'static str) -> Response<Body> {
    let mut response = crate::reply::empty(StatusCode::SEE_OTHER);
    response
        .headers_mut()
        .insert(LOCATION, HeaderValue::from_static(to));
    response
}

/// The page, for whoever may read the metrics it shows. The token they
/// presented is written into it (for the page's own requests), so it is
/// never cached or sent on as a referrer.
fn dashboard(broker: &Broker, token: Option<&str>, console: bool) -> Response<Body> {
    if let Err(e) = broker.metrics(token) {
        return refused(&e);
    }
    let page = PAGE
        .replace(TOKEN_SLOT, &html_escape(token.unwrap_or("")))
        .replace("{{console}}", if console { "on" } else { "off" });
    let mut response = with_type(
        StatusCode::OK,
        crate::reply::full(page),
        "text/html; charset=utf-8",
    );
    no_store(&mut response);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut response = with_type(StatusCode::OK, crate::reply::full(body), content_type);
    response.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn no_store(response: &mut Response<Body>) {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Whether `uri` asks for a listener of the operator's endpoints only
/// (`http://127.0.0.1:9090?only=ops`).
pub(crate) fn ops_only(uri: &str) -> bool {
    url::Url::parse(uri)
        .map(|u| u.query_pairs().any(|(k, v)| k == "only" && v == "ops"))
        .unwrap_or(false)
}

/// Starts a listener that answers only the operator's endpoints.
pub(crate) fn start(uri: &str, broker: Broker) -> Result<Box<dyn Listener>, SdkError> {
    let header_timeout = Duration::from_millis(broker.limits().header_timeout_ms.max(1));
    mist_sdk::net::serve_tcp(uri, move |stream, peer, stop| {
        serve(stream, peer, broker.clone(), stop, header_timeout)
    })
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Broker,
    mut stop: watch::Receiver<bool>,
    header_timeout: Duration,
) {
    let service = service_fn(move |request| {
        let broker = broker.clone();
        async move {
            let response = match route(&request, &broker, false).await {
                Some(response) => response,
                None => json_error(
                    StatusCode::NOT_FOUND,
                    &format!(
                        "no such endpoint: {} {} (this listener serves /metrics, /healthz, /readyz and /dashboard)",
                        request.method(),
                        request.uri().path()
                    ),
                ),
            };
            Ok::<_, Infallible>(response)
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                tracing::debug!(%peer, "HTTP connection to the metrics listener failed: {e}");
            }
        }
        _ = stop.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(name, HeaderValue::from_str(value).expect("header"));
        map
    }

    #[test]
    fn the_token_comes_from_any_of_three_headers() {
        assert_eq!(
            request_token(&headers("x-auth-token", "t1")).as_deref(),
            Some("t1")
        );
        assert_eq!(
            request_token(&headers("authorization", "Bearer t2")).as_deref(),
            Some("t2")
        );
        // "anyone:t:3" in base64: the token may hold a colon.
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:t:3");
        assert_eq!(
            request_token(&headers("authorization", &format!("Basic {basic}"))).as_deref(),
            Some("t:3")
        );
        assert_eq!(request_token(&headers("authorization", "Basic !!!")), None);
        assert_eq!(request_token(&headers("authorization", "Digest x")), None);
        assert_eq!(request_token(&HeaderMap::new()), None);
    }

    #[test]
    fn the_page_cannot_be_broken_out_of() {
        assert_eq!(
            html_escape(r#""><script>alert(1)</script>"#),
            "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"
        );
        assert!(PAGE.contains(TOKEN_SLOT));
        assert!(
            !PAGE.contains("http://") && !PAGE.contains("https://") && !SCRIPT.contains("https://"),
            "nothing may be fetched from elsewhere"
        );
    }

    #[test]
    fn ops_only_is_asked_for_in_the_query() {
        assert!(ops_only("http://127.0.0.1:9090?only=ops"));
        assert!(ops_only("http://127.0.0.1:9090/?x=1&only=ops"));
        assert!(!ops_only("http://127.0.0.1:9090"));
        assert!(!ops_only("http://127.0.0.1:9090?only=all"));
    }
}
