//! The client commands of the `mist` binary (README.md) against a real
//! server: `mist ping | subscribe | publish | list | who`.

use std::process::{Output, Stdio};

use mist_e2e::web::{await_figure, server_with_all_listeners};
use mist_e2e::{artifacts, MistServer, TIMEOUT};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// Runs `mist args...` to its end, with `stdin` as its input.
async fn mist(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(artifacts().mist())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting mist");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .expect("the mist command did not end in time")
        .expect("mist ran")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn succeeded(output: &Output) {
    assert!(
        output.status.success(),
        "{}\nstdout: {}\nstderr: {}",
        output.status,
        stdout(output),
        stderr(output)
    );
}

/// A `mist subscribe` running in the background.
struct Subscriber {
    child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Subscriber {
    /// Starts `mist subscribe args...` and waits until the broker holds
    /// `subscriptions` subscriptions in all (this one included).
    async fn start(server: &MistServer, args: &[&str], subscriptions: u64) -> Subscriber {
        let mut child = Command::new(artifacts().mist())
            .arg("subscribe")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting mist subscribe");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Live once the broker counts it (a subscriber that exits first
        // never is, and the wait fails).
        await_figure(server, "/subscriptions", subscriptions).await;
        Subscriber { child, lines }
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(TIMEOUT, self.lines.next_line())
            .await
            .expect("mist subscribe printed nothing in time")
            .unwrap()
            .expect("mist subscribe ended")
    }
}

#[tokio::test]
async fn ping_list_and_who() {
    let server = server_with_all_listeners(&[]);
    let tcp = server.tcp();

    let output = mist(&["ping", "--host", &tcp], "").await;
    succeeded(&output);
    assert_eq!(stdout(&output), "pong\n");

    let ws = format!("ws://{}/", server.addr("ws"));
    let output = mist(&["ping", "--host", &ws], "").await;
    succeeded(&output);
    assert_eq!(stdout(&output), "pong\n");

    let output = mist(&["list", "--host", &tcp], "").await;
    succeeded(&output);
    assert_eq!(stdout(&output), "[]\n");

    let output = mist(&["who", "--host", &tcp], "").await;
    succeeded(&output);
    let figures: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(figures["connections"], 1, "{figures}");
    assert_eq!(figures["listeners"]["tcp"], 1, "{figures}");
}

#[tokio::test]
async fn subscribe_prints_what_publish_sends() {
    let server = MistServer::start(&[]);
    let tcp = server.tcp();
    let mut plain = Subscriber::start(&server, &["--host", &tcp, "--tags", "a,b"], 1).await;
    let mut json = Subscriber::start(&server, &["--host", &tcp, "--tags", "b", "--json"], 2).await;

    let output = mist(
        &[
            "publish", "--host", &tcp, "--tags", "b,a,c", "--data", "hello",
        ],
        "",
    )
    .await;
    succeeded(&output);
    assert_eq!(stdout(&output), "");
    assert_eq!(plain.line().await, "hello");
    let message: Value = serde_json::from_str(&json.line().await).unwrap();
    assert_eq!(
        message,
        serde_json::json!({"tags": ["b", "a", "c"], "data": "hello"})
    );

    // Without --data, each line of stdin is one message, in order.
    let output = mist(&["publish", "--host", &tcp, "--tags", "a,b"], "one\ntwo\n").await;
    succeeded(&output);
    assert_eq!(plain.line().await, "one");
    assert_eq!(plain.line().await, "two");
    assert_eq!(
        serde_json::from_str::<Value>(&json.line().await).unwrap()["data"],
        "one"
    );

    // Only `b` matches the JSON subscriber.
    let output = mist(
        &["publish", "--host", &tcp, "--tags", "b", "--data", "b only"],
        "",
    )
    .await;
    succeeded(&output);
    assert_eq!(
        serde_json::from_str::<Value>(&json.line().await).unwrap()["data"],
        "two"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&json.line().await).unwrap()["data"],
        "b only"
    );
    plain.child.start_kill().unwrap();
    json.child.start_kill().unwrap();
}

#[tokio::test]
async fn an_unreachable_server_fails_with_a_readable_message() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let host = format!("127.0.0.1:{port}");
    for command in ["ping", "list", "who"] {
        let output = mist(&[command, "--host", &host], "").await;
        assert!(!output.status.success(), "{command}");
        let message = stderr(&output);
        assert!(
            message.starts_with(&format!("mist: cannot reach {host}: ")),
            "{command}: {message}"
        );
        assert!(message.contains("refused"), "{message}");
    }
    let output = mist(
        &["publish", "--host", &host, "--tags", "a", "--data", "x"],
        "",
    )
    .await;
    assert!(!output.status.success());
    let output = mist(&["subscribe", "--host", &host, "--tags", "a"], "").await;
    assert!(!output.status.success());
}

#[tokio::test]
async fn error_replies_and_refused_tokens_fail_with_the_reason() {
    let server = MistServer::start(&[
        "--authenticator",
        "memory://",
        "--token",
        "s3cret",
        "--max-message-bytes",
        "100",
    ]);
    let tcp = server.tcp();

    let output = mist(&["who", "--host", &tcp, "--token", "s3cret"], "").await;
    succeeded(&output);

    let output = mist(&["who", "--host", &tcp, "--token", "wrong"], "").await;
    assert!(!output.status.success());
    assert_eq!(
        stderr(&output),
        "mist: authentication failed: invalid token\n"
    );

    let output = mist(&["who", "--host", &tcp], "").await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("who needs admin mode"),
        "{}",
        stderr(&output)
    );

    let output = mist(
        &["publish", "--host", &tcp, "--tags", "a", "--data", "x"],
        "",
    )
    .await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).starts_with("mist: publish: "),
        "{}",
        stderr(&output)
    );

    let big = "x".repeat(200);
    let output = mist(
        &[
            "publish", "--host", &tcp, "--token", "s3cret", "--tags", "a", "--data", &big,
        ],
        "",
    )
    .await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("too large"), "{}", stderr(&output));

    let output = mist(&["publish", "--host", &tcp, "--tags", "a,"], "line\n").await;
    assert!(!output.status.success(), "an empty tag is refused");
    assert_eq!(stderr(&output), "mist: a tag cannot be empty\n");
}

#[tokio::test]
async fn subscribe_fails_when_the_server_goes_away() {
    let mut server = MistServer::start(&[]);
    let tcp = server.tcp();
    let mut subscriber = Subscriber::start(&server, &["--host", &tcp, "--tags", "x"], 1).await;
    server.terminate();
    let status = tokio::time::timeout(TIMEOUT, subscriber.child.wait())
        .await
        .expect("mist subscribe did not end")
        .unwrap();
    assert!(!status.success());
    let mut message = String::new();
    use tokio::io::AsyncReadExt;
    subscriber
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut message)
        .await
        .unwrap();
    assert_eq!(message, "mist: the connection to the broker is closed\n");
}

#[tokio::test]
async fn the_example_client_program_prints_what_arrives() {
    let server = MistServer::start(&[]);
    let mut child = Command::new(artifacts().dir.join("mist-example-client"))
        .args([server.tcp().as_str(), "hello,world"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the example client");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(TIMEOUT, lines.next_line())
            .await
            .expect("the example printed nothing in time")
            .unwrap()
            .expect("the example ended")
    };
    // It prints its list once subscribed: the barrier for publishing.
    assert_eq!(next().await, r#"LIST: [["hello", "world"]]"#);
    let output = mist(
        &[
            "publish",
            "--host",
            &server.tcp(),
            "--tags",
            "world,hello",
            "--data",
            "hi",
        ],
        "",
    )
    .await;
    succeeded(&output);
    assert_eq!(
        next().await,
        r#"MSG: Message { tags: ["world", "hello"], data: "hi" }"#
    );
}
