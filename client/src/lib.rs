//! An async client for the [Mist](https://example.invalid/mist) broker, on
//! tokio, over TCP or WebSocket, each with or without TLS.
//!
//! A [`Client`] sends commands and gets each one's own answer, even while
//! deliveries stream in on the same connection; deliveries are read with
//! [`Client::next_message`]. Error replies from the broker become
//! [`Error::Server`], a refused token [`Error::Auth`], and a connection that
//! ends makes every waiting and later call return [`Error::Closed`], never
//! hang.
//!
//! Every call is cancel-safe: a request whose future is dropped (a
//! `tokio::time::timeout`, a `select!` branch that lost) is either not sent
//! at all or sent whole, and its answer is discarded; later calls still get
//! their own answers.
//!
//! What the broker sends on its own, not as an answer, is a [`Notice`]: when
//! an admin takes tags from this connection's token, the broker drops the
//! subscriptions that held them and says so with a `revoked` notice. Read
//! notices with [`Client::next_notice`]; they never become a request's
//! answer or error.
//!
//! A line (or WebSocket message) from the broker longer than
//! [`MAX_LINE_BYTES`] ends the connection with [`Error::LineTooLong`]
//! rather than growing memory without bound.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mist_client::Error> {
//! use mist_client::Client;
//!
//! let subscriber = Client::connect("127.0.0.1:1445", None).await?;
//! subscriber.subscribe(&["hello"]).await?; // live once this returns
//!
//! let publisher = Client::connect("ws://127.0.0.1:8888/", None).await?;
//! publisher.publish(&["hello", "world"], "world!").await?;
//!
//! let message = subscriber.next_message().await?;
//! assert_eq!(message.data, "world!");
//! # Ok(())
//! # }
//! ```
//!
//! Over TLS (`tls://host:port`, `wss://host:port/`) the server's
//! certificate is verified against the system's roots, or against the CA
//! file given in [`ConnectOptions::ca_file`]: a CA in it that issued the
//! server's certificate, or the server's certificate itself (pinned; even
//! one marked `CA:TRUE`, as `openssl req -x509` makes them). One that does
//! not verify is [`Error::Tls`], whose reason says what to do; never
//! accepted.
//!
//! # Layout
//! - `lib.rs`: [`Client`], its commands, and the values they return.
//! - `transport.rs`: opening TCP, TLS and WebSocket streams.
//! - `tls.rs`: what TLS trusts (a CA file's CAs, and its certificates as
//!   pins), the verifier, and TLS failures in words.
//! - `connection.rs`: the wire: the writing and reading tasks, and matching
//!   answers to requests.
//! - `error.rs`: [`Error`].

#![deny(missing_docs)]

mod connection;
mod error;
mod tls;
mod transport;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub use error::Error;

use connection::{Parts, Reply, Request, Shared};

/// How many deliveries wait for [`Client::next_message`] before the newest
/// are dropped (and counted in [`Client::dropped`]).
pub const DELIVERY_BUFFER: usize = 8192;

/// How many notices wait for [`Client::next_notice`] before the newest are
/// dropped (and counted in [`Client::notices_dropped`]).
pub const NOTICE_BUFFER: usize = 256;

/// The longest line (over WebSocket: message) the client accepts from the
/// broker, 16 MiB. A longer one ends the connection with
/// [`Error::LineTooLong`]: the broker never sends one (its own limit on
/// messages is far lower by default), so it is a broken or hostile peer.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// The header a WebSocket connection carries its token in.
const TOKEN_HEADER: &str = "X-AUTH-TOKEN";

/// A message delivered to this client: one published by another client
/// whose tags include one of this client's subscriptions.
///
/// ```no_run
/// # async fn demo(client: mist_client::Client) -> Result<(), mist_client::Error> {
/// let mist_client::Message { tags, data } = client.next_message().await?;
/// println!("{}: {data}", tags.join(","));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The tags exactly as the publisher sent them.
    pub tags: Vec<String>,
    /// The payload.
    pub data: String,
}

/// Something the broker said on its own, not as an answer to a request.
///
/// Today the broker sends one kind: `revoked`, when an admin has taken tags
/// from the token this connection authenticated with: one notice for each
/// subscription that held such a tag, which the broker has already
/// removed. `tags` is that subscription's tag set; `error` says why, in the
/// broker's words.
///
/// ```no_run
/// # async fn demo(client: mist_client::Client) -> Result<(), mist_client::Error> {
/// let notice = client.next_notice().await?;
/// if notice.command == "revoked" {
///     eprintln!("lost tags {:?}: {}", notice.tags, notice.error);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Notice {
    /// What happened (`"revoked"`).
    pub command: String,
    /// For `revoked`: the tag set of the subscription removed.
    pub tags: Vec<String>,
    /// The broker's explanation.
    pub error: String,
}

/// The broker's connection figures, as `who` reports them.
///
/// ```no_run
/// # async fn demo(client: mist_client::Client) -> Result<(), mist_client::Error> {
/// let who = client.who().await?;
/// println!("{} connections, {} dropped", who.connections, who.dropped);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Who {
    /// Open connections (sessions), this one included.
    pub connections: u64,
    /// Open connections per listener scheme (`tcp`, `ws`, `http`, ...).
    #[serde(default)]
    pub listeners: BTreeMap<String, u64>,
    /// Subscriptions held, over all connections.
    pub subscriptions: u64,
    /// Messages published.
    pub messages_in: u64,
    /// Messages delivered.
    pub messages_out: u64,
    /// Deliveries dropped for subscribers that fell behind.
    pub dropped: u64,
}

/// Checks a tag set as the broker would: at least one tag, none empty.
///
/// ```
/// assert!(mist_client::check_tags(&["a", "b"]).is_ok());
/// assert!(mist_client::check_tags::<&str>(&[]).is_err());
/// assert!(mist_client::check_tags(&["a", ""]).is_err());
/// ```
pub fn check_tags<T: AsRef<str>>(tags: &[T]) -> Result<(), Error> {
    if tags.is_empty() {
        return Err(Error::Invalid("a tag set needs at least one tag"));
    }
    if tags.iter().any(|t| t.as_ref().is_empty()) {
        return Err(Error::Invalid("a tag cannot be empty"));
    }
    Ok(())
}

/// How [`Client::connect_with`] connects: the token to give, and which
/// certificates to trust over TLS.
///
/// ```no_run
/// # async fn demo() -> Result<(), mist_client::Error> {
/// use mist_client::{Client, ConnectOptions};
/// let options = ConnectOptions::new().token("TOKEN").ca_file("/etc/mist/ca.pem");
/// let client = Client::connect_with("tls://broker.example:1446", &options).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// A token to authenticate with.
    pub token: Option<String>,
    /// Trust the certificates in this PEM file instead of the system's
    /// roots: as CAs (a private CA), and each as itself (the server's own
    /// certificate, pinned, self-signed or not).
    pub ca_file: Option<PathBuf>,
}

impl ConnectOptions {
    /// No token; the system's roots.
    pub fn new() -> Self {
        ConnectOptions::default()
    }

    /// Authenticates with `token`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trusts the certificates in `path` instead of the system's roots.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }
}

/// One connection to a broker. Commands take `&self`, so one task may read
/// deliveries while others send; share it with an `Arc`. Dropping it closes
/// the connection.
///
/// ```no_run
/// # async fn demo() -> Result<(), mist_client::Error> {
/// use std::sync::Arc;
/// let client = Arc::new(mist_client::Client::connect("127.0.0.1:1445", None).await?);
/// client.subscribe(&["news"]).await?;
/// let reader = client.clone();
/// tokio::spawn(async move {
///     while let Ok(message) = reader.next_message().await {
///         println!("{}", message.data);
///     }
/// });
/// client.publish(&["news", "today"], "hello").await?;
/// # Ok(())
/// # }
/// ```
pub struct Client {
    requests: mpsc::Sender<Request>,
    deliveries: Mutex<mpsc::Receiver<Message>>,
    notices: Mutex<mpsc::Receiver<Notice>>,
    shared: Arc<Shared>,
    tasks: [tokio::task::AbortHandle; 2],
}

impl Drop for Client {
    /// Closes the connection: the reading and writing tasks hold the
    /// socket otherwise.
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Client {
    /// Connects to `target` and, with a `token`, authenticates.
    ///
    /// `target` is `host:port` or `tcp://host:port` for the line protocol
    /// (`tls://host:port` over TLS), or a `ws://host:port/path` URL for
    /// WebSocket (`wss://` over TLS), with TLS certificates verified against
    /// the system's roots ([`Client::connect_with`] takes a CA file). Over TCP the token is
    /// sent as the first command (`auth`) and a refusal is
    /// [`Error::Auth`]; over WebSocket it goes in the `X-AUTH-TOKEN` header,
    /// and a token the broker does not know leaves the connection anonymous
    /// (docs/protocol.md, "Tokens and admin mode"), so refusals come with
    /// the commands that need it.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), mist_client::Error> {
    /// let admin = mist_client::Client::connect("tcp://127.0.0.1:1445", Some("TOKEN")).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(target: &str, token: Option<&str>) -> Result<Client, Error> {
        let options = ConnectOptions {
            token: token.map(str::to_owned),
            ca_file: None,
        };
        Self::connect_with(target, &options).await
    }

    /// Connects to `target` (as [`Client::connect`]) with `options`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), mist_client::Error> {
    /// use mist_client::{Client, ConnectOptions};
    /// let options = ConnectOptions::new().ca_file("cert.pem");
    /// let client = Client::connect_with("wss://localhost:8443/", &options).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_with(target: &str, options: &ConnectOptions) -> Result<Client, Error> {
        let (token, ca_file) = (options.token.as_deref(), options.ca_file.as_deref());
        if target.starts_with("ws://") || target.starts_with("wss://") {
            return Self::connect_ws(target, token, ca_file).await;
        }
        let stream = transport::line_stream(target, ca_file).await?;
        let client = Client::new(connection::tcp(
            target,
            stream,
            DELIVERY_BUFFER,
            MAX_LINE_BYTES,
        ));
        if let Some(token) = token {
            let line = serde_json::json!({"command": "auth", "data": token}).to_string();
            match client.request(Some(&line)).await {
                Err(Error::Server { message, .. }) => return Err(Error::Auth(message)),
                other => {
                    other?;
                }
            }
        }
        Ok(client)
    }

    async fn connect_ws(
        url: &str,
        token: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Client, Error> {
        let mut request = url.into_client_request()?;
        if let Some(token) = token {
            let value = token
                .parse()
                .map_err(|_| Error::Invalid("the token cannot be sent in an HTTP header"))?;
            request.headers_mut().insert(TOKEN_HEADER, value);
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_LINE_BYTES))
            .max_frame_size(Some(MAX_LINE_BYTES));
        let socket = transport::websocket(url, request, config, ca_file).await?;
        Ok(Client::new(connection::ws(
            url,
            socket,
            DELIVERY_BUFFER,
            MAX_LINE_BYTES,
        )))
    }

    fn new(parts: Parts) -> Client {
        Client {
            requests: parts.requests,
            deliveries: Mutex::new(parts.deliveries),
            notices: Mutex::new(parts.notices),
            shared: parts.shared,
            tasks: parts.tasks,
        }
    }

    /// Sends `line` and waits for its answer; an error reply is an error.
    ///
    /// Cancel-safe: the request goes to the writing task whole or not at
    /// all, and once there it is written whole whatever becomes of this
    /// future (see `connection.rs`).
    async fn request(&self, line: Option<&str>) -> Result<Vec<Reply>, Error> {
        let (answer, replies) = oneshot::channel();
        let request = Request {
            line: line.map(str::to_owned),
            answer,
        };
        self.requests
            .send(request)
            .await
            .map_err(|_| Error::Closed)?;
        let replies = replies.await.map_err(|_| Error::Closed)??;
        if let Some(reply) = replies.iter().find(|r| r.error.is_some()) {
            return Err(Error::Server {
                command: reply.command.clone(),
                message: reply.error.clone().unwrap_or_default(),
            });
        }
        Ok(replies)
    }

    /// Sends `command` with `tags` (and `data`) and waits until the broker
    /// has acted on it.
    async fn command<T: AsRef<str>>(
        &self,
        command: &str,
        tags: &[T],
        data: Option<&str>,
    ) -> Result<Vec<Reply>, Error> {
        check_tags(tags)?;
        let tags: Vec<&str> = tags.iter().map(AsRef::as_ref).collect();
        let line = match data {
            Some(data) => serde_json::json!({"command": command, "tags": tags, "data": data}),
            None => serde_json::json!({"command": command, "tags": tags}),
        };
        self.request(Some(&line.to_string())).await
    }

    /// Asks the broker for a pong: a round trip, after which every command
    /// sent before it has taken effect.
    ///
    /// ```no_run
    /// # async fn demo(client: mist_client::Client) -> Result<(), mist_client::Error> {
    /// client.ping().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ping(&self) -> Result<(), Error> {
        self.request(None).await.map(drop)
    }

    /// Subscribes to messages whose tags include all of `tags`. Returns once
    /// the subscription is live.
    ///
    /// ```no_run
    /// # async fn demo(client: mist_client::Client) -> Result<(), mist_client::Error> {
    /// client.subscribe(&["room:1", "chat"]).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn subscribe<T: AsRef<str>>(&self, tags: &[T]) -> Result<(), Error> {
        self.command("subscribe", tags, None).await.map(drop)
    }

    /// Removes the subscription to exactly this tag set.
    ///
    /// ```no_run
    /// # async fn demo(client: mist_client::Client) -> Result<(), mist_client::Error> {
    /// client.unsubscribe(&["room:1", "chat"]).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn unsubscribe<T: AsRef<str>>(&self, tags: &[T]) -> Result<(), Error> {
        self.command("unsubscribe", tags, None).await.map(drop)
    }

    /// Publishes `data` tagged `tags`. Returns once the bytes are written
    /// and the broker has taken the message (it answered the ping sent after
    /// it), so a refusal — a tag this token may not use, a message over the
    /// size limit — is this call's error.
    ///
    /// ```no_run
    /// # async fn demo(client: mist_client::Client) -> Result<(), mist_client::Error> {
    /// client.publish(&["room:1", "chat"], "hello").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish<T: AsRef<str>>(&self, tags: &[T], data: &str) -> Result<(), Error> {
        self.command("publish", tags, Some(data)).await.map(drop)
    }

    /// This connection's subscriptions, each sorted, the list sorted.
    ///
    /// ```no_run
    /// # async fn demo(client: mist_client::Client) -> Result<(), mist_client::Error> {
    /// for tags in client.list().await? {
    ///     println!("{}", tags.join(","));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list(&self) -> Result<Vec<Vec<String>>, Error> {
        let data = self.data_of("list").await?;
        serde_json::from_str(&data).map_err(|e| Error::Protocol(format!("list: {e}: {data}")))
    }

    /// The broker's connection figures. With an authenticator configured,
    /// this needs admin mode.
    ///
    /// ```no_run
    /// # async fn demo(client: mist_client::Client) -> Result<(), mist_client::Error> {
    /// println!("{} connections", client.who().await?.connections);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn who(&self) -> Result<Who, Error> {
        let data = self.data_of("who").await?;
        serde_json::from_str(&data).map_err(|e| Error::Protocol(format!("who: {e}: {data}")))
    }

    /// Sends `{"command": command}` and returns the `data` of its reply.
    async fn data_of(&self, command: &str) -> Result<String, Error> {
        let line = serde_json::json!({ "command": command }).to_string();
        self.request(Some(&line))
            .await?
            .into_iter()
            .find(|r| r.command == command)
            .and_then(|r| r.data)
            .ok_or_else(|| Error::Protocol(format!("no answer to {command}")))
    }

    /// The next message delivered to this client. When the connection
    /// ends, [`Error::Closed`] (after every message that arrived before).
    ///
    /// ```no_run
    /// # async fn demo(client: mist_client::Client) -> Result<(), mist_client::Error> {
    /// loop {
    ///     let message = client.next_message().await?;
    ///     println!("{:?}: {}", message.tags, message.data);
    /// }
    /// # }
    /// ```
    pub async fn next_message(&self) -> Result<Message, Error> {
        self.deliveries
            .lock()
            .await
            .recv()
            .await
            .ok_or(Error::Closed)
    }

    /// The next [`Notice`] the broker sent this connection. When the
    /// connection ends, [`Error::Closed`] (after every notice that arrived
    /// before).
    ///
    /// Notices wait here until read, up to [`NOTICE_BUFFER`]; they never
    /// hold up deliveries or answers.
    ///
    /// ```no_run
    /// # async fn demo(client: mist_client::Client) -> Result<(), mist_client::Error> {
    /// let notice = client.next_notice().await?;
    /// eprintln!("{}: {:?} ({})", notice.command, notice.tags, notice.error);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn next_notice(&self) -> Result<Notice, Error> {
        self.notices.lock().await.recv().await.ok_or(Error::Closed)
    }

    /// Notices dropped because more than [`NOTICE_BUFFER`] were waiting
    /// unread.
    ///
    /// ```no_run
    /// # fn demo(client: mist_client::Client) {
    /// assert_eq!(client.notices_dropped(), 0);
    /// # }
    /// ```
    pub fn notices_dropped(&self) -> u64 {
        self.shared.notices_dropped.load(Ordering::Relaxed)
    }

    /// Deliveries dropped because more than [`DELIVERY_BUFFER`] were waiting
    /// unread.
    ///
    /// ```no_run
    /// # fn demo(client: mist_client::Client) {
    /// if client.dropped() > 0 {
    ///     eprintln!("reading too slowly: {} messages lost", client.dropped());
    /// }
    /// # }
    /// ```
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}
