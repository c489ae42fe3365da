//! `websocket_frames`: arbitrary bytes as the client side of an upgraded
//! WebSocket, served by the ws plugin's [`mist_plugin_ws::serve`] exactly
//! as both WebSocket listeners serve one.
//!
//! The input is written raw into one end of an in-memory pipe whose other
//! end the plugin serves, in pieces with a pause after each, then a close
//! frame; then the client's writing side is shut. (The pauses let the
//! server's writer run between reads, as it would against a real client.)
//! What the server sends back is decoded as a WebSocket client
//! (tungstenite) would decode it.
//! Each input is served twice: as a client that took the `mist.lines`
//! subprotocol ([`Framing::Lines`]) and as one that did not.
//! Checked: `serve` finishes; every frame the server sends is valid
//! WebSocket; every text frame holds one protocol JSON object (under
//! `mist.lines`, whole `\n`-ended lines of them); a subscriber
//! to `["a"]` and `["b","c"]` on the same broker gets only deliveries it
//! matches; nothing outlives the connection.
//!
//! No runtime and no clock: the whole exchange (server, client writer and
//! client reader) is one future, polled by hand with [`drive`]. Everything
//! it waits on is in this process (the pipe, the session's output), so a
//! poll that leaves it pending without anything having woken it means it
//! can never finish: a hang, reported at once rather than after a timeout.

use std::time::Duration;

use futures_util::StreamExt;
use mist_plugin_ws::Framing;
use mist_sdk::SessionInfo;
use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::check::{self, Expect};
use crate::client::{drive, settle, Client};
use mist::broker::{Broker, Limits};

/// A masked close frame, status 1000, that ends every input.
const CLOSE: &[u8] = &[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8];

/// The input goes out in pieces this large, with a pause after each.
const PIECE: usize = 256;

/// The client's read buffer. tungstenite's default (128 KiB, zeroed for
/// every connection) cost more than serving most inputs; the size only
/// changes how many reads a frame takes, not how it is decoded.
const READ_BUFFER: usize = 4096;

const WATCHED: &[&[&str]] = &[&["a"], &["b", "c"]];
const WATCH: &[u8] =
    b"{\"command\":\"subscribe\",\"tags\":[\"a\"]}\n{\"command\":\"subscribe\",\"tags\":[\"b\",\"c\"]}\n";

const LIMITS: Limits = Limits {
    // Also the frame reader's limit, as the listeners pass it: larger
    // messages are skipped and get error replies.
    max_message_bytes: 1024,
    max_queue_bytes: 1 << 14,
    max_memory: 1 << 20,
    max_tags: 8,
    max_subscriptions: 8,
    max_connections: 16,
    slow_consumer_timeout: Duration::from_secs(30),
    header_timeout: Duration::from_secs(10),
    handshake_timeout: Duration::from_secs(10),
    request_timeout: Duration::from_secs(30),
};

/// Runs one input. Panics when an invariant breaks.
pub fn websocket_frames(input: &[u8]) {
    serve(input, Framing::Message);
    serve(input, Framing::Lines);
}

/// Serves `input`; returns the messages the server sent (text frames, or
/// lines under [`Framing::Lines`]).
fn serve(input: &[u8], framing: Framing) -> usize {
    let broker = Broker::new(LIMITS);
    let handle = broker.handle();
    let mut watcher = Client::open(
        &handle,
        SessionInfo::new("tcp", "watcher"),
        Expect::Deliveries(WATCHED),
    );
    let subscribed = watcher.feed(WATCH);
    settle(subscribed, &mut [&mut watcher]);
    let session = mist_sdk::Broker::from_abi(handle).open_session(SessionInfo::new("ws", "fuzzed"));

    let (client, server) = tokio::io::duplex(1 << 16);
    // Kept until the end: a dropped sender would stop the server at once.
    let (_stop, stop) = watch::channel(false);
    let (from_server, mut to_server) = tokio::io::split(client);
    let send = async move {
        // The server may stop reading (a close frame, a protocol error)
        // and drop its end: the rest of the input then cannot go.
        for piece in input.chunks(PIECE) {
            if to_server.write_all(piece).await.is_err() {
                break;
            }
            pause().await;
        }
        let _ = to_server.write_all(CLOSE).await;
        let _ = to_server.shutdown().await;
    };
    let exchange = async {
        tokio::join!(
            mist_plugin_ws::serve(server, session, LIMITS.max_message_bytes, stop, framing),
            send,
            receive(from_server, framing),
        )
    };
    // The watcher is drained only at the end, as before: its queue may
    // overflow meanwhile. A hang or a livelock panics in `drive`.
    let ((), (), sent) = drive(exchange, &mut []);

    watcher.drain();
    watcher.close();
    watcher.drain();
    drop(watcher);
    let stats = broker.stats();
    assert_eq!((stats.sessions, stats.subscriptions), (0, 0));
    assert_eq!(
        broker.figures().queue_bytes,
        0,
        "queued bytes not given back"
    );
    sent
}

/// Lets the rest of the exchange run (the server's reading and writing)
/// before the client sends more, as a real client's pauses would: outside
/// a runtime, each yield wakes the exchange at once, so it is polled again.
async fn pause() {
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

/// Reads what the server sends as a WebSocket client would, checking it.
async fn receive(from_server: ReadHalf<DuplexStream>, framing: Framing) -> usize {
    // The client's own answers (pongs, a close) go nowhere: the fuzz input
    // is all the server hears.
    let stream = tokio::io::join(from_server, tokio::io::sink());
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let mut socket = WebSocketStream::from_raw_socket(stream, Role::Client, Some(config)).await;
    let mut texts = 0;
    while let Some(frame) = socket.next().await {
        match frame {
            Ok(Message::Text(text)) => match framing {
                Framing::Message => {
                    check::line(text.as_bytes(), Expect::Any);
                    texts += 1;
                }
                Framing::Lines => {
                    let text = text.as_bytes();
                    assert!(text.ends_with(b"\n"), "a frame cut mid-line: {text:?}");
                    for line in text[..text.len() - 1].split(|&b| b == b'\n') {
                        check::line(line, Expect::Any);
                        texts += 1;
                    }
                }
            },
            Ok(Message::Close(_) | Message::Pong(_)) => {}
            Ok(other) => panic!("the server sent {other:?}"),
            // The server may end the connection without a closing handshake
            // when the client broke the protocol.
            Err(
                WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
                | WsError::ConnectionClosed
                | WsError::AlreadyClosed,
            ) => break,
            Err(e) => panic!("the server's frames are not valid WebSocket: {e}"),
        }
    }
    texts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![
            0x80 | opcode,
            0x80 | u8::try_from(payload.len()).expect("short"),
        ];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        out
    }

    #[test]
    fn each_request_frame_is_answered_with_a_text_frame() {
        for framing in [Framing::Message, Framing::Lines] {
            let ping = frame(1, br#"{"command":"ping"}"#);
            assert_eq!(serve(&ping, framing), 1);
            let binary = frame(2, b"\x00");
            let not_json = frame(1, b"not json");
            assert_eq!(
                serve(&[binary, ping.clone(), not_json].concat(), framing),
                3
            );
            // Nothing after a close frame is read.
            assert_eq!(serve(&[frame(8, b""), ping].concat(), framing), 0);
        }
    }

    #[test]
    fn under_mist_lines_each_line_of_a_frame_is_answered() {
        let two = frame(1, b"{\"command\":\"ping\"}\n{\"command\":\"ping\"}");
        assert_eq!(serve(&two, Framing::Lines), 2);
        // One message, not JSON: one error.
        assert_eq!(serve(&two, Framing::Message), 1);
    }
}
