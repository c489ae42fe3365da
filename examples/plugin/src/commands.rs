//! The custom commands.
//!
//! - `{"command":"echo","tags":[...],"data":"x"}` → the same message back.
//! - `{"command":"stats"}` → `{"command":"stats","data":"{\"sessions\":…}"}`:
//!   the broker's figures (sessions, subscriptions, messages in and out,
//!   drops).
//! - `{"command":"announce","tags":[...],"data":"x"}` → publishes `x` on the
//!   tags through the broker, to everyone but the sender, if the sender may
//!   use those tags; replies with how many clients it reached.

use mist_sdk::{Broker, CommandContext, Message, SdkError};

/// Runs one command. An error becomes an error reply to the sender.
pub fn run(broker: &Broker, cx: CommandContext, request: Message) -> Result<(), SdkError> {
    match request.command.as_str() {
        "echo" => {
            cx.reply(request);
        }
        "stats" => {
            let stats = broker.stats();
            let data = serde_json::json!({
                "sessions": stats.sessions,
                "subscriptions": stats.subscriptions,
                "messages_in": stats.messages_in,
                "messages_out": stats.messages_out,
                "dropped": stats.dropped,
            });
            cx.reply(Message::new("stats").with_data(data.to_string()));
        }
        "announce" => {
            let tags: Vec<&str> = request.tags.iter().map(|t| t.as_str()).collect();
            if tags.is_empty() {
                return Err(SdkError::invalid_input("announce needs tags"));
            }
            if !cx.may_use(&tags) {
                return Err(SdkError::permission_denied(
                    "permission denied: the token does not hold every one of these tags",
                ));
            }
            let reached = broker.publish(&tags, request.data.as_str(), Some(cx.session))?;
            cx.reply(Message::new("announce").with_data(format!("{reached} clients")));
        }
        other => return Err(SdkError::unsupported(format!("no command {other:?} here"))),
    }
    Ok(())
}
