//! `publish`: delivered to every other session holding a subscription
//! whose tags are all among the message's (SPEC §1), through the open
//! [`Delivery`](super::super::delivery::Delivery). A registered token's
//! publish first asks the store whether the token holds every tag.

use super::{Checked, Context, Pending, Refusal, Step};
use crate::broker::access::Token;
use crate::broker::protocol::{ProtocolError, RawTags, TagSet};

/// A publish with its raw tags and data (a JSON string token, or why the
/// data is unusable).
pub(super) fn run(
    cx: &mut Context<'_>,
    tags: RawTags<'_>,
    data: Result<&str, ProtocolError>,
) -> Result<Step, Refusal> {
    let raw_data = data.map_err(|e| Refusal::protocol("publish", e))?;
    match cx.permission("publish")? {
        None => {
            let id = cx.id;
            cx.delivery()
                .publish(id, tags, raw_data)
                .map_err(|e| Refusal::protocol("publish", e))?;
            Ok(Step::Done)
        }
        Some(token) => {
            let tags = TagSet::parse(tags, cx.shared.limits.max_tags)
                .map_err(|e| Refusal::protocol("publish", e))?;
            Ok(Step::Wait(Pending::Check {
                token,
                op: Checked::Publish {
                    tags: tags.into_owned(),
                    raw_data: raw_data.to_string(),
                },
            }))
        }
    }
}

/// The store allowed the publish: delivered now, unless a revocation
/// happened since the check began (then it is checked again).
pub(super) fn granted(
    cx: &mut Context<'_>,
    token: Token,
    tags: TagSet<'static>,
    raw_data: String,
    epoch: u64,
) -> Result<Step, Refusal> {
    if cx.shared.tokens.epoch() != epoch {
        return Ok(Step::Wait(Pending::Check {
            token,
            op: Checked::Publish { tags, raw_data },
        }));
    }
    let id = cx.id;
    cx.delivery().publish_checked(id, &tags, &raw_data);
    cx.flush();
    Ok(Step::Done)
}
