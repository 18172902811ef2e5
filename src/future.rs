//! The boxed future the crate's dyn-compatible async traits return.

use std::future::Future;
use std::pin::Pin;

/// A boxed, `Send` future: what the methods of the crate's async traits
/// that are used as trait objects return
/// ([`CredentialProvider`](crate::CredentialProvider),
/// [`Outbox`](crate::outbox::Outbox),
/// [`AttachmentStore`](crate::email::AttachmentStore)). Implement such a method with
/// `Box::pin(async move { ... })`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
