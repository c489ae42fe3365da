//! `list`: the session's subscriptions, sorted.

use super::{Context, Refusal, Step};

pub(super) fn run(cx: &mut Context<'_>) -> Result<Step, Refusal> {
    cx.authenticated("list")?;
    let subscriptions = cx.shared.router.read().subscriptions(cx.id);
    let data = serde_json::to_string(&subscriptions).unwrap_or_else(|_| "[]".into());
    cx.reply("list", &data);
    Ok(Step::Done)
}
