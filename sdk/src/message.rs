//! Conveniences on [`Message`], the protocol message.

use abi_stable::std_types::{RString, RVec};

use crate::abi::Message;

impl Message {
    /// A message with `command` and nothing else.
    pub fn new(command: &str) -> Self {
        Message {
            command: command.into(),
            ..Message::default()
        }
    }

    /// The same message with `tags`.
    pub fn with_tags<T: AsRef<str>>(mut self, tags: &[T]) -> Self {
        self.tags = tags
            .iter()
            .map(|t| RString::from(t.as_ref()))
            .collect::<RVec<_>>();
        self
    }

    /// The same message with `data`.
    pub fn with_data(mut self, data: impl Into<String>) -> Self {
        self.data = data.into().into();
        self
    }

    /// The same message with `error`.
    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = error.into().into();
        self
    }

    /// The tags as plain strings.
    pub fn tag_strings(&self) -> Vec<String> {
        self.tags.iter().map(|t| t.to_string()).collect()
    }
}
