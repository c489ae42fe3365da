//! A plugin's command: any name the broker does not answer itself, routed
//! to the plugin that registered it. The plugin replies through a
//! [`Replier`], now or later; its later replies are dropped like
//! deliveries when the session's queue is full.

use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RErr, ROk, RVec};
use mist_sdk::abi::{CommandContext, ReplierApi, ReplierApi_TO};
use mist_sdk::{Access, Message};

use super::{Context, Effect, Pending, Refusal, Step};
use crate::broker::id::SessionId;
use crate::broker::output::Output;
use crate::broker::protocol::{self, Request};
use crate::broker::shared::{CommandRoute, Shared};
use crate::broker::state::Standing;

/// A custom command on its way to its plugin.
pub(crate) struct Call {
    route: CommandRoute,
    request: Message,
    standing: Standing,
}

pub(super) fn run(
    cx: &mut Context<'_>,
    command: &str,
    request: &Request<'_>,
) -> Result<Step, Refusal> {
    let Some(route) = cx.shared.commands.get().and_then(|c| c.get(command)) else {
        return Err(Refusal::invalid(
            command,
            format!("unknown command {command:?}"),
        ));
    };
    let tags =
        protocol::parse_optional_tags(request.tags).map_err(|e| Refusal::protocol(command, e))?;
    let data = match request.data {
        None => String::new(),
        Some(_) => {
            protocol::data_string(request.data).map_err(|e| Refusal::protocol(command, e))?
        }
    };
    Ok(Step::Wait(Pending::Custom(Box::new(Call {
        route: route.clone(),
        request: Message::new(command).with_tags(&tags).with_data(data),
        standing: cx.state.standing.clone(),
    }))))
}

impl Call {
    pub(super) async fn perform(
        self,
        shared: &Shared,
        session: SessionId,
        output: &Arc<Output>,
    ) -> Effect {
        let Call {
            route,
            request,
            standing,
        } = self;
        let mut allowed_tags = RVec::new();
        if let (Access::TOKEN, Some(token), Some(auth)) =
            (standing.access, &standing.token, shared.auth.get())
        {
            if let ROk(tags) = auth.store.tags(token.secret.as_str().into()).await {
                allowed_tags = tags;
            }
        }
        let command = request.command.to_string();
        let context = CommandContext {
            session: session.to_u64(),
            access: standing.access,
            allowed_tags,
            replies: ReplierApi_TO::from_ptr(RArc::new(Replier(output.clone())), TD_Opaque),
        };
        match route.handler.call_command(context, request).await {
            ROk(()) => Effect::Nothing,
            RErr(e) => {
                shared.plugin_failed(&route.plugin, &e);
                tracing::warn!(plugin = %route.plugin, command = %command, kind = %e.kind, "custom command failed: {}", e.message);
                Effect::Refused(Refusal::new(
                    &command,
                    e.kind,
                    format!("{} (plugin {})", e.message, route.plugin),
                ))
            }
        }
    }
}

/// Lets a custom command reply to its session, now or later. A reply that
/// finds the session's queue full is dropped like a delivery: a plugin
/// cannot grow a client's queue past its limit.
#[derive(Clone)]
struct Replier(Arc<Output>);

impl ReplierApi for Replier {
    fn send(&self, message: Message) -> bool {
        // Called from plugin code: a bug here must not unwind into it.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut out = Vec::new();
            protocol::message(&mut out, &message);
            self.0.push_notice(&out)
        }))
        .unwrap_or(false)
    }
}
