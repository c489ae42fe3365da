//! `who`: the broker's figures (connections, subscriptions, messages, and
//! in a cluster the nodes), for admins.

use mist_sdk::{Access, ErrorKind};

use super::{Context, Refusal, Step};

pub(super) fn run(cx: &mut Context<'_>) -> Result<Step, Refusal> {
    if cx.shared.auth.get().is_some() && cx.state.standing.access != Access::ADMIN {
        return Err(Refusal::new(
            "who",
            ErrorKind::PERMISSION_DENIED,
            "who needs admin mode: auth with the server token first",
        ));
    }
    let data = cx.shared.who().to_string();
    cx.reply("who", &data);
    Ok(Step::Done)
}
