//! The client commands of the CLI (`mist ping | subscribe | publish | list
//! | who`), on [`mist_client`]: part of the binary, not of the library.

use std::io::Write;

use mist_client::{Client, ConnectOptions, Error};
use tokio::io::AsyncBufReadExt;

use mist::cli::{ClientCommand, Connection, PublishArgs, SubscribeArgs};

/// Runs one client command; what it prints goes to stdout.
pub async fn run(command: ClientCommand) -> Result<(), Error> {
    match command {
        ClientCommand::Ping(connection) => {
            connect(&connection).await?.ping().await?;
            println!("pong");
        }
        ClientCommand::Subscribe(args) => subscribe(args).await?,
        ClientCommand::Publish(args) => publish(args).await?,
        ClientCommand::List(connection) => {
            let list = connect(&connection).await?.list().await?;
            println!("{}", json(&list));
        }
        ClientCommand::Who(connection) => {
            let who = connect(&connection).await?.who().await?;
            println!("{}", json(&who));
        }
    }
    Ok(())
}

async fn connect(connection: &Connection) -> Result<Client, Error> {
    let mut options = ConnectOptions::new();
    if let Some(token) = &connection.token {
        options = options.token(token.as_str());
    }
    if let Some(ca) = &connection.ca {
        options = options.ca_file(ca.as_path());
    }
    Client::connect_with(&connection.host, &options).await
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("\"unprintable: {e}\""))
}

async fn subscribe(args: SubscribeArgs) -> Result<(), Error> {
    mist_client::check_tags(&args.tags)?;
    let client = connect(&args.connection).await?;
    client.subscribe(&args.tags).await?;
    let mut out = std::io::stdout().lock();
    loop {
        let message = tokio::select! {
            message = client.next_message() => message?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let line = if args.json {
            json(&message)
        } else {
            message.data
        };
        // A closed stdout (`| head`) ends the command quietly.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
    }
}

async fn publish(args: PublishArgs) -> Result<(), Error> {
    mist_client::check_tags(&args.tags)?;
    let client = connect(&args.connection).await?;
    if let Some(data) = &args.data {
        return client.publish(&args.tags, data).await;
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        client.publish(&args.tags, &line).await?;
    }
    Ok(())
}
