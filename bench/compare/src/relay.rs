//! A fan-out relay that parses nothing: a connection whose first line is
//! `SUB` receives every complete line any other connection sends. It is the
//! ceiling a broker can reach on this machine's loopback TCP with the same
//! clients, not a broker: it cannot route, and a slow subscriber slows
//! every publisher.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

type Subscribers = Arc<Mutex<Vec<mpsc::Sender<Bytes>>>>;

/// Chunks a subscriber may have waiting before its publisher waits.
const QUEUE: usize = 1024;
/// Bytes read at once.
const READ: usize = 64 * 1024;
/// A first line longer than this is no `SUB`: the connection publishes.
const FIRST_LINE_MAX: usize = 64 * 1024;

/// Serves on `addr` until the process is killed.
pub async fn run(addr: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let subscribers = Subscribers::default();
    loop {
        let (sock, _) = listener.accept().await?;
        sock.set_nodelay(true)?;
        tokio::spawn(serve(sock, subscribers.clone()));
    }
}

async fn serve(sock: TcpStream, subscribers: Subscribers) -> std::io::Result<()> {
    let (mut read, mut write) = sock.into_split();
    let mut buf = BytesMut::with_capacity(READ);
    // The first line says what this connection is.
    loop {
        if buf.contains(&b'\n') {
            if buf.starts_with(b"SUB") {
                let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
                subscribers.lock().push(tx);
                write.write_all(b"OK\n").await?;
                while let Some(chunk) = rx.recv().await {
                    write.write_all(&chunk).await?;
                }
                return Ok(());
            }
            // A publisher: its first line is relayed like the rest.
            break;
        }
        if buf.len() > FIRST_LINE_MAX {
            break;
        }
        if read.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
    // A publisher: forward every run of complete lines to all subscribers.
    loop {
        if let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') {
            let chunk = buf.split_to(last_nl + 1).freeze();
            let targets: Vec<_> = subscribers.lock().clone();
            for tx in targets {
                // A subscriber that left is skipped.
                let _ = tx.send(chunk.clone()).await;
            }
        }
        buf.reserve(READ);
        if read.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    #[tokio::test]
    async fn every_line_reaches_every_subscriber() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let subscribers = Subscribers::default();
        tokio::spawn({
            let subscribers = subscribers.clone();
            async move {
                loop {
                    let (sock, _) = listener.accept().await.unwrap();
                    tokio::spawn(serve(sock, subscribers.clone()));
                }
            }
        });
        let mut readers = Vec::new();
        for _ in 0..2 {
            let mut sub = BufReader::new(TcpStream::connect(addr).await.unwrap());
            sub.get_mut().write_all(b"SUB\n").await.unwrap();
            let mut line = String::new();
            sub.read_line(&mut line).await.unwrap();
            assert_eq!(line, "OK\n");
            readers.push(sub);
        }
        let mut publisher = TcpStream::connect(addr).await.unwrap();
        publisher.write_all(b"one\ntwo\nthr").await.unwrap();
        publisher.write_all(b"ee\n").await.unwrap();
        for sub in &mut readers {
            let mut got = Vec::new();
            for _ in 0..3 {
                let mut line = String::new();
                tokio::time::timeout(std::time::Duration::from_secs(10), sub.read_line(&mut line))
                    .await
                    .unwrap()
                    .unwrap();
                got.push(line);
            }
            assert_eq!(got, ["one\n", "two\n", "three\n"]);
        }
    }
}
