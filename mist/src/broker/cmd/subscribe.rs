//! `subscribe` and `unsubscribe`. A registered token's subscribe first
//! asks the store whether the token holds every tag; `unsubscribe` is
//! never refused for want of permission: it can only narrow what the
//! session receives. Subscribing to a set held already, or unsubscribing
//! from one not held, is not an error.

use super::{Checked, Context, Pending, Refusal, Step};
use crate::broker::access::Token;
use crate::broker::protocol::{RawTags, Request, TagSet};
use crate::broker::router::{Added, SubscribeError};

pub(super) fn subscribe(cx: &mut Context<'_>, request: &Request<'_>) -> Result<Step, Refusal> {
    let tags = TagSet::parse(RawTags::Json(request.tags), cx.shared.limits.max_tags)
        .map_err(|e| Refusal::protocol("subscribe", e))?;
    let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
    match cx.permission("subscribe")? {
        None => add(cx, tags, None),
        Some(token) => Ok(Step::Wait(Pending::Check {
            token,
            op: Checked::Subscribe(tags),
        })),
    }
}

/// Adds the subscription. For a registered token, `checked` is the token
/// and the revocation epoch its check began at: if a revocation happened
/// since (compared under the router's write lock, which a revocation takes
/// after bumping the epoch), it is checked again instead. In a cluster,
/// waits for the backplane's confirmation before the next command.
pub(super) fn add(
    cx: &mut Context<'_>,
    tags: Vec<String>,
    checked: Option<(Token, u64)>,
) -> Result<Step, Refusal> {
    let limit = cx.shared.limits.max_subscriptions;
    let mut router = cx.shared.router.write();
    if let Some((token, epoch)) = checked {
        if cx.shared.tokens.epoch() != epoch {
            drop(router);
            return Ok(Step::Wait(Pending::Check {
                token,
                op: Checked::Subscribe(tags),
            }));
        }
    }
    match router.subscribe(cx.id, &tags, limit) {
        Ok(Added {
            confirmation: Some(confirmation),
            ..
        }) => Ok(Step::Wait(Pending::Confirm(confirmation))),
        Ok(_) | Err(SubscribeError::Gone) => Ok(Step::Done),
        Err(SubscribeError::TooMany { limit }) => Err(Refusal::invalid(
            "subscribe",
            format!("too many subscriptions: a connection may hold {limit}"),
        )),
    }
}

pub(super) fn unsubscribe(cx: &mut Context<'_>, request: &Request<'_>) -> Result<Step, Refusal> {
    let tags = TagSet::parse(RawTags::Json(request.tags), cx.shared.limits.max_tags)
        .map_err(|e| Refusal::protocol("unsubscribe", e))?;
    cx.authenticated("unsubscribe")?;
    cx.shared.router.write().unsubscribe(cx.id, &tags);
    Ok(Step::Done)
}
