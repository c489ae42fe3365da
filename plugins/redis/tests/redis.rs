//! The redis plugin against a real `redis-server` the test starts: the
//! backplane suite every plugin passes (`mist_e2e::backplane`).

use mist_e2e::backplane::{self, Open};
use mist_e2e::redis::Redis;
use mist_plugin_redis::RedisBackplane;
use mist_sdk::Backplane;

fn opener(uri: String) -> Open {
    Box::new(move |inbox| {
        let uri = uri.clone();
        Box::pin(async move {
            let backplane = RedisBackplane::open(&uri, inbox).await?;
            Ok(Box::new(backplane) as Box<dyn Backplane>)
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip() {
    let redis = Redis::start();
    backplane::round_trip(&opener(redis.uri())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sends_what_is_queued() {
    let server = Redis::start();
    backplane::stop_sends_what_is_queued(&opener(server.uri())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_across_channels() {
    let redis = Redis::start();
    backplane::order_across_channels(&opener(redis.uri())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart() {
    let redis = Redis::start();
    backplane::server_restart(&opener(redis.uri()), &redis.service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_at_open() {
    let redis = Redis::start();
    backplane::server_down_at_open(&opener(redis.uri()), &redis.service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_refuses_without_waiting() {
    let redis = Redis::start();
    let (inbox, mut events) = backplane::inbox();
    let uri = format!("{}?buffer=4096", redis.uri());
    let a = RedisBackplane::open(&uri, inbox).await.unwrap();
    events.connection(true, mist_e2e::TIMEOUT).await;
    // Publishing never waits: a burst far faster than any server is
    // refused as soon as the 4 KiB queue is full, with OVERLOADED (the host
    // offers it again), not UNAVAILABLE (it is connected).
    let refused = (0..100_000).find_map(|_| a.publish(vec!["c".into()], vec![0; 3000]).err());
    let e = refused.expect("a 300 MB burst never filled a 4 KiB queue");
    assert_eq!(e.kind, mist_sdk::ErrorKind::OVERLOADED);
    assert!(e.message.contains("full"), "{}", e.message);
    a.stop();
}
