//! OAuth2 sign-in in settings: the [`OAuth2Provider`](crate::oauth2::OAuth2Provider)
//! of settings that renew their own access tokens (feature `oauth2`), as
//! the rest of the settings code sees it. Without the feature the type is
//! empty: settings cannot hold one, and stored settings that ask for one
//! are refused with a field error naming the feature.

use std::sync::Arc;

use secrecy::SecretString;

use super::FieldError;

/// The provider held by settings with OAuth2 sign-in.
#[cfg(feature = "oauth2")]
pub(crate) type OAuth2Source = crate::oauth2::OAuth2Provider;

/// Without the feature `oauth2`, no settings hold a provider.
#[cfg(not(feature = "oauth2"))]
#[derive(Debug)]
pub(crate) enum OAuth2Source {}

/// The parts of OAuth2 sign-in that settings store.
pub(crate) struct OAuth2Parts {
    pub(crate) token_url: String,
    pub(crate) client_id: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) username: String,
    pub(crate) refresh_token: SecretString,
    pub(crate) client_secret: Option<SecretString>,
}

/// The field error when OAuth2 sign-in is asked for without the feature.
#[cfg_attr(feature = "oauth2", allow(dead_code))]
pub(crate) const NEEDS_FEATURE: &str =
    "OAuth2 sign-in with a refresh token needs relaymail's cargo feature `oauth2`";

#[cfg(feature = "oauth2")]
impl OAuth2Parts {
    /// The provider, or every problem by field (`oauth2_token_url`,
    /// `oauth2_client_id`, `oauth2_scopes`, `username`,
    /// `oauth2_refresh_token`).
    pub(crate) fn provider(self) -> Result<Arc<OAuth2Source>, Vec<FieldError>> {
        use secrecy::ExposeSecret;
        let client = crate::oauth2::OAuth2Client::new(self.token_url, self.client_id)
            .scopes(self.scopes)
            .with_client_secret(self.client_secret);
        let mut errors: Vec<FieldError> = client
            .problems()
            .into_iter()
            .map(|(field, why)| FieldError::new(field, why))
            .collect();
        if self.username.trim().is_empty() {
            errors.push(FieldError::new(
                "username",
                "OAuth2 sign-in needs the user name (the mailbox the tokens are for)",
            ));
        }
        if self.refresh_token.expose_secret().trim().is_empty() {
            errors.push(FieldError::new(
                "oauth2_refresh_token",
                "the refresh token is empty: sign in to get one",
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        crate::oauth2::OAuth2Provider::new(client, self.username, self.refresh_token)
            .map(Arc::new)
            .map_err(|e| vec![FieldError::new("oauth2", e.to_string())])
    }
}

#[cfg(not(feature = "oauth2"))]
impl OAuth2Parts {
    /// Without the feature: always an `oauth2` field error.
    pub(crate) fn provider(self) -> Result<Arc<OAuth2Source>, Vec<FieldError>> {
        Err(vec![FieldError::new("oauth2", NEEDS_FEATURE)])
    }
}

#[cfg(feature = "oauth2")]
impl OAuth2Source {
    /// What settings store of it.
    pub(crate) fn parts(&self) -> OAuth2Parts {
        let client = self.client();
        OAuth2Parts {
            token_url: client.token_url().to_owned(),
            client_id: client.client_id().to_owned(),
            scopes: client.requested_scopes().to_vec(),
            username: self.username().to_owned(),
            refresh_token: self.refresh_token(),
            client_secret: client.secret().cloned(),
        }
    }
}

#[cfg(not(feature = "oauth2"))]
impl OAuth2Source {
    /// Never called: no value exists.
    pub(crate) fn parts(&self) -> OAuth2Parts {
        match *self {}
    }
}

#[cfg(not(feature = "oauth2"))]
impl super::CredentialProvider for OAuth2Source {
    fn credential(&self) -> crate::future::BoxFuture<'_, Result<crate::Credential, crate::Error>> {
        match *self {}
    }
}
