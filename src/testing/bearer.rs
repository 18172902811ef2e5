//! The OAuth2 bearer tokens a [`TestServer`](super::TestServer) accepts,
//! shared with the test that changes them while the server runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use secrecy::{ExposeSecret, SecretString};

/// The access tokens a test server accepts for XOAUTH2 and OAUTHBEARER
/// (see [`ServerConfig::bearer_tokens`](super::ServerConfig::bearer_tokens)),
/// each for one user. Clones share the set: the test keeps one and allows,
/// expires or revokes tokens while the server runs, with no waiting — a
/// token "expires" the moment the test says so.
///
/// `Debug` shows how many tokens there are, never a token.
///
/// ```
/// use relaymail::testing::BearerTokens;
///
/// let tokens = BearerTokens::new();
/// tokens.allow("app@example.com", "token-1");
/// assert!(tokens.accepts("app@example.com", "token-1"));
/// assert!(!tokens.accepts("other@example.com", "token-1"));
/// assert!(tokens.expire("token-1"));
/// assert!(!tokens.accepts("app@example.com", "token-1"));
/// ```
#[derive(Clone, Default)]
pub struct BearerTokens(Arc<Mutex<BTreeMap<String, (String, SecretString)>>>);

impl BearerTokens {
    /// An empty set: every token is refused.
    pub fn new() -> BearerTokens {
        BearerTokens::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, (String, SecretString)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Accepts `token` for `username` from now on.
    pub fn allow(&self, username: &str, token: &str) {
        // Keyed by a digest, so that the map's keys hold no token either.
        self.lock().insert(
            key(token),
            (username.to_owned(), SecretString::from(token.to_owned())),
        );
    }

    /// Refuses `token` from now on (it expired, or was revoked); `false`
    /// when it was not accepted anyway.
    pub fn expire(&self, token: &str) -> bool {
        self.lock().remove(&key(token)).is_some()
    }

    /// Refuses every token from now on.
    pub fn expire_all(&self) {
        self.lock().clear();
    }

    /// How many tokens are accepted now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no token is accepted now.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Whether `token` is accepted now for `username`.
    pub fn accepts(&self, username: &str, token: &str) -> bool {
        self.lock()
            .get(&key(token))
            .is_some_and(|(user, secret)| user == username && secret.expose_secret() == token)
    }
}

impl std::fmt::Debug for BearerTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerTokens")
            .field("accepted", &self.len())
            .finish()
    }
}

/// The map key of a token: hex of its SHA-256.
fn key(token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
