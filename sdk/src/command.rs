//! What a custom command knows about its caller and how it replies.

use abi_stable::std_types::RString;

use crate::abi::{Access, CommandContext as AbiCommandContext, Message, ReplierBox};

/// The session a custom command was sent by.
pub struct CommandContext {
    /// The session's id.
    pub session: u64,
    /// What the session may do.
    pub access: Access,
    /// For [`Access::TOKEN`]: the tags its token holds, read at call time.
    pub allowed_tags: Vec<String>,
    replies: ReplierBox,
}

impl CommandContext {
    pub(crate) fn from_abi(context: AbiCommandContext) -> Self {
        CommandContext {
            session: context.session,
            access: context.access,
            allowed_tags: context
                .allowed_tags
                .into_iter()
                .map(RString::into_string)
                .collect(),
            replies: context.replies,
        }
    }

    /// Sends `message` to the session, in order with its other output.
    /// Returns `false` if the session has gone.
    pub fn reply(&self, message: Message) -> bool {
        self.replies.send(message)
    }

    /// Whether the session may use every one of `tags`.
    pub fn may_use<T: AsRef<str>>(&self, tags: &[T]) -> bool {
        match self.access {
            Access::OPEN | Access::ADMIN => true,
            Access::TOKEN => tags
                .iter()
                .all(|t| self.allowed_tags.iter().any(|a| a == t.as_ref())),
            _ => false,
        }
    }

    /// Whether the session is in admin mode.
    pub fn is_admin(&self) -> bool {
        self.access == Access::ADMIN
    }
}
