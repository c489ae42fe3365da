//! A Mist client program, as the seed's Go example was: connect, ping,
//! subscribe, publish, list, then print every message that arrives.
//!
//! ```text
//! cargo run -p mist-example-client -- [HOST] [TAG,TAG...]
//! ```
//!
//! HOST defaults to `127.0.0.1:1445` (a `ws://host:port/` URL works too);
//! tags default to `hello`. A second without a message is noted on stderr,
//! where the Go example's `time.After` branch was. It ends when the broker
//! closes the connection.

use std::process::ExitCode;
use std::time::Duration;

use mist_client::Client;

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let host = args.next().unwrap_or_else(|| "127.0.0.1:1445".into());
    let tags: Vec<String> = args
        .next()
        .unwrap_or_else(|| "hello".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    match run(&host, &tags).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mist-example-client: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(host: &str, tags: &[String]) -> Result<(), mist_client::Error> {
    let client = Client::connect(host, None).await?;
    client.ping().await?;
    client.subscribe(tags).await?;
    // Our own message is not delivered back to us: a broker never returns
    // a publisher's message to it.
    client.publish(tags, "world").await?;
    println!("LIST: {:?}", client.list().await?);
    loop {
        match tokio::time::timeout(Duration::from_secs(1), client.next_message()).await {
            Ok(message) => println!("MSG: {:?}", message?),
            Err(_) => eprintln!("(no message for a second; still waiting)"),
        }
    }
}
