//! `GET /subscribe?tags=a,b`: deliveries as Server-Sent Events.
//!
//! A connection whose first request is a subscription ([`crate::head`]) is
//! served here without hyper ([`stream`]): the response head and the `:
//! subscribed` barrier are written, then each batch of events as one
//! chunk, from a buffer that exists only while it is being written. What
//! the client sends meanwhile is read and dropped, which is how its
//! leaving is noticed. The answer says `connection: close`: once the
//! stream ends (a revocation, the listener stopping) the connection closes.
//! An idle stream holds its session, its socket and one small task.
//!
//! A subscription that comes later on a kept-alive connection is hyper's
//! ([`subscribe`]): a task moves its events through a channel into the
//! response body, and the connection keeps hyper's buffers (some 17 KiB).
//! Both send the same events ([`next`]).

use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{
    HeaderMap, HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING,
};
use hyper::{Request, Response, StatusCode};
use mist_sdk::abi_stable::std_types::RVec;
use mist_sdk::net::{stopping, Stream};
use mist_sdk::{Broker, Session, SessionInfo};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Sleep;

use crate::head::Subscribe;
use crate::reply::{self, json_error, Body};

/// A comment line this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Chunks waiting for a slow client of a stream served by hyper; beyond
/// them the broker's own bounded queue holds (and, when full, drops) that
/// client's deliveries.
const IN_FLIGHT: usize = 8;
/// How every delivery the broker writes begins.
const DELIVERY: &[u8] = br#"{"command":"publish""#;
const SUBSCRIBED: &[u8] = b": subscribed\n\n";
const KEEP_ALIVE_COMMENT: &[u8] = b": keep-alive\n\n";
/// The end of a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
/// After its last bytes, how long a closing connection goes on reading
/// (and dropping) what its client sends, at most how much: closing with
/// unread bytes would reset the connection before the client has read
/// the end.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// The subscription a `GET /subscribe` asks for, live once this returns
/// `Ok`; or the response refusing it: `400` without tags, the broker's
/// refusal (`401`, `403`, ...), `504` when it takes longer than the
/// request timeout.
async fn open(
    query: Option<&str>,
    token: Option<String>,
    broker: &Broker,
    scheme: &'static str,
    peer: SocketAddr,
) -> Result<Session, Response<Body>> {
    let tags: Vec<String> = query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .filter(|(key, _)| key == "tags")
                .flat_map(|(_, value)| value.split(',').map(str::to_owned).collect::<Vec<_>>())
                .filter(|tag| !tag.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if tags.is_empty() {
        return Err(json_error(
            StatusCode::BAD_REQUEST,
            "missing tags: subscribe with /subscribe?tags=a,b",
        ));
    }
    let session = broker.open_session(SessionInfo::new(scheme, peer).with_token(token));
    let line = serde_json::json!({"command": "subscribe", "tags": tags}).to_string();
    let timeout = Duration::from_millis(broker.limits().request_timeout_ms);
    match tokio::time::timeout(timeout, session.execute(line.as_bytes())).await {
        Ok(Ok(())) => Ok(session),
        Ok(Err(refused)) => {
            session.close();
            Err(reply::refusal(&refused))
        }
        Err(_) => {
            session.close();
            Err(json_error(
                StatusCode::GATEWAY_TIMEOUT,
                "the broker did not take the subscription in time",
            ))
        }
    }
}

/// Serves a connection whose first request is `request`, a `GET
/// /subscribe` read by [`crate::head`]: the event stream, or the response
/// refusing it; then the connection closes.
pub(crate) async fn stream(
    stream: Stream,
    request: Subscribe,
    broker: Broker,
    scheme: &'static str,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let session = match open(
        request.query.as_deref(),
        request.token,
        &broker,
        scheme,
        peer,
    )
    .await
    {
        Ok(session) => session,
        // Boxed: only a refused connection needs room for this.
        Err(refusal) => return Box::pin(refuse(stream, refusal)).await,
    };
    let first = stream_head();
    match stream {
        Stream::Plain(mut tcp) => {
            let (reader, writer) = tcp.split();
            serve_stream(&session, reader, writer, first, stop).await;
        }
        Stream::Tls(tls) => {
            let (reader, writer) = tokio::io::split(tls);
            serve_stream(&session, reader, writer, first, stop).await;
        }
    }
}

/// The event stream of an open subscription, `wire` (the response head
/// and the barrier) first, until the client leaves (its session is closed
/// at once, as hyper closes a connection whose client has), the broker
/// ends the session (at once, even if a write is stuck), the subscription
/// is revoked, or the listener stops (after writing what is queued).
///
/// One loop in one future, reading, writing and waiting in each `select!`:
/// an idle stream's task holds only what the wait needs (futures nested as
/// arguments would each be stored more than once, for the stream's life).
async fn serve_stream<R, W>(
    session: &Session,
    mut reader: R,
    mut writer: W,
    mut wire: Vec<u8>,
    mut stop: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut keep_alive = pin!(tokio::time::sleep(KEEP_ALIVE));
    // How much of `wire` is written; writes are single `write` calls, so
    // that a write raced and dropped has written nothing.
    let mut written = 0;
    let mut last = false;
    {
        let mut reading = pin!(drop_input(&mut reader, usize::MAX));
        loop {
            if written < wire.len() {
                tokio::select! {
                    n = writer.write(&wire[written..]) => match n {
                        Ok(n) if n > 0 => written += n,
                        _ => break session.close(),
                    },
                    () = &mut reading => break session.close(),
                    () = session.closed() => break session.close(),
                }
                continue;
            }
            if last {
                if writer.shutdown().await.is_ok() {
                    session.close();
                    break;
                }
                return session.close();
            }
            // Nothing is held between batches.
            (wire, written) = (Vec::new(), 0);
            let (events, end) = tokio::select! {
                next = next(session, keep_alive.as_mut(), &mut stop) => next,
                () = &mut reading => break session.close(),
                () = session.closed() => break session.close(),
            };
            if !events.is_empty() {
                chunk(&mut wire, &events);
            }
            if end {
                wire.extend_from_slice(LAST_CHUNK);
                last = true;
            }
        }
    }
    if last && written == wire.len() {
        let _ = tokio::time::timeout(LINGER, drop_input(&mut reader, LINGER_BYTES)).await;
    }
}

/// The response head of an event stream, and the `: subscribed` barrier
/// as its first chunk.
fn stream_head() -> Vec<u8> {
    let mut headers = HeaderMap::new();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    let mut first = response_head(StatusCode::OK, &headers);
    chunk(&mut first, SUBSCRIBED);
    first
}

/// `: subscribed` and then the events of a subscription that came as a
/// later request on a connection hyper serves.
pub(crate) async fn subscribe(
    request: Request<Incoming>,
    broker: Broker,
    scheme: &'static str,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    abort: Arc<Notify>,
) -> Response<Body> {
    let token = crate::header_token(&request);
    let session = match open(request.uri().query(), token, &broker, scheme, peer).await {
        Ok(session) => session,
        Err(refusal) => return refusal,
    };
    let (events, receiver) = mpsc::channel(IN_FLIGHT);
    // Room for one is certain: the channel is new.
    let _ = events.try_send(Bytes::from_static(SUBSCRIBED));
    tokio::spawn(forward(session, events, stop, abort));
    let body = StreamBody::new(futures_util::stream::unfold(
        receiver,
        |mut receiver| async {
            let chunk = receiver.recv().await?;
            Some((Ok(Frame::data(chunk)), receiver))
        },
    ));
    let mut response = reply::with_type(StatusCode::OK, body.boxed_unsync(), "text/event-stream");
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Moves the session's events into the response body until the client
/// goes away (the body, and with it the receiver, is dropped), the session
/// ends, its subscription is revoked, or the listener stops (after writing
/// what is queued).
async fn forward(
    session: Session,
    events: mpsc::Sender<Bytes>,
    mut stop: watch::Receiver<bool>,
    abort: Arc<Notify>,
) {
    let mut keep_alive = pin!(tokio::time::sleep(KEEP_ALIVE));
    loop {
        let (chunk, last) = tokio::select! {
            next = next(&session, keep_alive.as_mut(), &mut stop) => next,
            _ = events.closed() => break,
            // The broker ended the session (a slow consumer): the whole
            // connection goes, even if a write to the client is stuck.
            () = session.closed() => {
                abort.notify_one();
                break;
            }
        };
        if (!chunk.is_empty() && events.send(Bytes::from(chunk)).await.is_err()) || last {
            break;
        }
    }
    session.close();
}

/// What an event stream sends next, and whether it is the last: the
/// deliveries the session hands over (the last when the session is
/// closed and drained, or a revocation came); a keep-alive comment every
/// [`KEEP_ALIVE`]; once the listener stops, what is queued, as the last.
async fn next(
    session: &Session,
    mut keep_alive: Pin<&mut Sleep>,
    stop: &mut watch::Receiver<bool>,
) -> (Vec<u8>, bool) {
    let mut output = RVec::new();
    tokio::select! {
        open = session.output(&mut output) => {
            let (events, revoked) = event_lines(&output);
            (events, revoked || !open)
        }
        () = keep_alive.as_mut() => {
            let deadline = keep_alive.deadline() + KEEP_ALIVE;
            keep_alive.as_mut().reset(deadline);
            (KEEP_ALIVE_COMMENT.to_vec(), false)
        }
        _ = stopping(stop) => {
            session.try_output(&mut output);
            (event_lines(&output).0, true)
        }
    }
}

/// `data: <line>\n\n` for each delivery the session handed over; a
/// revocation notice becomes an `event: revoked` and ends the batch (and
/// the stream: it was the stream's only subscription). Other lines are not
/// for an event stream and are left out.
fn event_lines(output: &[u8]) -> (Vec<u8>, bool) {
    let mut events = Vec::with_capacity(output.len() + output.len() / 8 + 16);
    for line in mist_sdk::output_lines(output) {
        if line.starts_with(DELIVERY) {
            events.extend_from_slice(b"data: ");
            events.extend_from_slice(line);
            events.extend_from_slice(b"\n\n");
        } else if is_revocation(line) {
            events.extend_from_slice(b"event: revoked\ndata: ");
            events.extend_from_slice(line);
            events.extend_from_slice(b"\n\n");
            return (events, true);
        }
    }
    (events, false)
}

fn is_revocation(line: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Command<'a> {
        #[serde(borrow)]
        command: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Command<'_>>(line)
        .is_ok_and(|c| c.command.as_deref() == Some("revoked"))
}

/// Appends `data` as one chunk of a chunked body.
fn chunk(wire: &mut Vec<u8>, data: &[u8]) {
    wire.reserve(data.len() + 12);
    wire.extend_from_slice(format!("{:X}\r\n", data.len()).as_bytes());
    wire.extend_from_slice(data);
    wire.extend_from_slice(b"\r\n");
}

/// An HTTP/1.1 response head as hyper writes one: the status line,
/// `headers`, a `date`, the empty line.
fn response_head(status: StatusCode, headers: &HeaderMap) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
    head
}

/// Answers with `response` (a refusal, its body known) and closes.
async fn refuse(mut stream: Stream, response: Response<Body>) {
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let mut headers = parts.headers;
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    let mut wire = response_head(parts.status, &headers);
    wire.extend_from_slice(&body);
    if stream.write_all(&wire).await.is_ok() && stream.shutdown().await.is_ok() {
        let _ = tokio::time::timeout(LINGER, drop_input(&mut stream, LINGER_BYTES)).await;
    }
}

/// Reads what the client sends and drops it, until it ends or fails or
/// `limit` bytes have come. The bytes are read into the stack of each
/// poll: nothing is held while the client is silent.
async fn drop_input<R: AsyncRead + Unpin>(reader: &mut R, mut limit: usize) {
    std::future::poll_fn(|cx| loop {
        let mut bytes = [0u8; 2048];
        let mut buf = ReadBuf::new(&mut bytes);
        match Pin::new(&mut *reader).poll_read(cx, &mut buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(())) if !buf.filled().is_empty() && limit > buf.filled().len() => {
                limit -= buf.filled().len();
            }
            Poll::Ready(_) => return Poll::Ready(()),
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn each_delivery_is_one_event() {
        let (chunk, revoked) = event_lines(
            b"{\"command\":\"publish\",\"tags\":[\"a\"],\"data\":\"1\"}\n{\"command\":\"publish\",\"tags\":[\"b\"]}\n",
        );
        assert_eq!(
            &chunk[..],
            b"data: {\"command\":\"publish\",\"tags\":[\"a\"],\"data\":\"1\"}\n\ndata: {\"command\":\"publish\",\"tags\":[\"b\"]}\n\n"
        );
        assert!(!revoked);
        assert!(event_lines(b"").0.is_empty());
    }

    #[test]
    fn a_revocation_ends_the_stream_after_what_came_before() {
        let (chunk, revoked) = event_lines(
            b"{\"command\":\"publish\",\"tags\":[\"a\"]}\n{\"command\":\"revoked\",\"tags\":[\"a\"],\"error\":\"tag a was taken away\"}\n{\"command\":\"publish\",\"tags\":[\"a\"]}\n",
        );
        assert!(revoked);
        assert_eq!(
            &chunk[..],
            &b"data: {\"command\":\"publish\",\"tags\":[\"a\"]}\n\nevent: revoked\ndata: {\"command\":\"revoked\",\"tags\":[\"a\"],\"error\":\"tag a was taken away\"}\n\n"[..]
        );
        // Other replies are not events.
        let (chunk, revoked) = event_lines(b"{\"command\":\"\",\"error\":\"x\"}\n");
        assert!(chunk.is_empty() && !revoked);
    }

    #[test]
    fn chunks_and_heads_are_framed_as_hyper_frames_them() {
        let mut wire = Vec::new();
        chunk(&mut wire, &[b'x'; 26]);
        assert_eq!(&wire[..4], b"1A\r\n");
        assert!(wire.ends_with(b"x\r\n"));
        let mut headers = HeaderMap::new();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let head = String::from_utf8(response_head(StatusCode::FORBIDDEN, &headers)).unwrap();
        assert!(
            head.starts_with("HTTP/1.1 403 Forbidden\r\ncache-control: no-cache\r\ndate: "),
            "{head}"
        );
        assert!(head.ends_with(" GMT\r\n\r\n"), "{head}");
    }
}
