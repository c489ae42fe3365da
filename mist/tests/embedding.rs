//! The `mist` library in a program of its own that installs no `tracing`
//! subscriber: the built-in plugins share the host's `tracing`, and their
//! log forwarding must not turn into a loop (it once recursed until the
//! stack overflowed) nor take the program's global subscriber slot.

use std::time::Duration;

use mist::cli::ServerArgs;
use mist::config::ServerConfig;
use mist::server::Server;

#[test]
fn a_server_starts_serves_and_logs_without_a_subscriber() {
    let args = ServerArgs {
        // The second is served by no plugin: skipping it logs an ERROR,
        // the level a subscriber-less program still "enables".
        listeners: vec!["tcp://127.0.0.1:0".into(), "nothing://127.0.0.1:0".into()],
        ..Default::default()
    };
    let config = ServerConfig::resolve(&args).expect("a valid configuration");
    // The runtime the built-in plugins run on, as `mist` itself uses it.
    mist_sdk::runtime().block_on(async {
        let mut server = tokio::time::timeout(Duration::from_secs(30), Server::start(&config))
            .await
            .expect("started in time")
            .expect("started");
        let uris = server.listener_uris();
        assert_eq!(uris.len(), 1, "{uris:?}");
        let addr = uris[0].strip_prefix("tcp://").expect("a tcp listener");
        let client = mist_client::Client::connect(addr, None)
            .await
            .expect("connects");
        tokio::time::timeout(Duration::from_secs(10), client.ping())
            .await
            .expect("answered in time")
            .expect("pong");
        server.stop();
    });
    // The program can still install its own subscriber: nothing took the slot.
    assert!(
        tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default())
            .is_ok(),
        "the sdk's forwarder took the global subscriber"
    );
}
