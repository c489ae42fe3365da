//! `ping`: answered with `pong`, in order with everything before it —
//! which is what makes it a barrier (SPEC §2).

use super::{Context, Refusal, Step};

pub(super) fn run(cx: &mut Context<'_>) -> Result<Step, Refusal> {
    cx.reply("ping", "pong");
    Ok(Step::Done)
}
