//! OAuth2 sign-in in settings: the `OAuth2Provider`
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

#[cfg(all(test, feature = "oauth2"))]
mod tests {
    use secrecy::ExposeSecret;

    use super::super::SIGN_IN_AGAIN as SIGN_IN_AGAIN_FIELD;
    use super::super::{Auth, FieldError, PasswordChange, SettingsUpdate, SmtpSettings};
    use crate::oauth2::{OAuth2Client, OAuth2Provider};

    const REFRESH: &str = "1//Unit-Refresh-Secret";
    const CLIENT_SECRET: &str = "Unit-Client-S3cret";
    const TOKEN_URL: &str = "https://oauth2.example.com/token";

    fn provider() -> std::sync::Arc<OAuth2Provider> {
        let client = OAuth2Client::new(TOKEN_URL, "client-1")
            .scope("https://mail.google.com/")
            .client_secret(CLIENT_SECRET);
        std::sync::Arc::new(OAuth2Provider::new(client, "app@example.com", REFRESH).expect("provider"))
    }

    fn settings() -> SmtpSettings {
        SmtpSettings::builder()
            .host("smtp.example.com")
            .sender("app@example.com")
            .oauth2(provider())
            .build()
            .expect("settings")
    }

    fn parts(s: &SmtpSettings) -> super::OAuth2Parts {
        s.oauth2.as_ref().expect("oauth2").parts()
    }

    fn assert_clean(text: &str) {
        assert!(
            !text.contains("Unit-Refresh-Secret") && !text.contains("Unit-Client-S3cret"),
            "{text}"
        );
    }

    #[test]
    fn settings_with_oauth2_never_show_its_secrets() {
        let s = settings();
        assert!(matches!(s.auth(), Auth::Provider(_)));
        assert!(s.oauth2_provider().is_some());
        assert_clean(&format!("{s:?} {s:#?} {:?}", s.to_builder()));
        // The URL form has no place for it: written without credentials.
        let url = s.url().expose_password();
        assert_eq!(url, "smtp://smtp.example.com:587?from=app%40example.com");
        for param in [
            "oauth2",
            "refresh_token",
            "access_token",
            "token",
            "client_secret",
            "client_id",
            "token_url",
        ] {
            let e = SmtpSettings::from_url(&format!(
                "smtp://smtp.example.com?from=a@example.com&{param}=Unit-Refresh-Secret"
            ))
            .expect_err(param);
            let message = e.field("url").map(FieldError::message).unwrap_or_default();
            assert!(message.contains("does not belong in a URL"), "{param}: {e}");
            assert_clean(&format!("{e} {e:?}"));
        }
    }

    #[test]
    fn a_kept_refresh_token_never_follows_a_server_change() {
        let s = settings();
        // What is not about the server keeps it, sharing the provider.
        let same = s.to_builder().sender_name("App").build().expect("kept");
        assert!(std::sync::Arc::ptr_eq(
            same.oauth2_provider().expect("p"),
            s.oauth2_provider().expect("p")
        ));
        for builder in [
            s.to_builder().host("attacker.example.net"),
            s.to_builder().port(2525),
            s.to_builder().dangerous(|d| d.accept_invalid_certs(true)),
        ] {
            let e = builder.build().expect_err("moved");
            assert_eq!(
                e.field("oauth2_refresh_token").map(FieldError::message),
                Some(SIGN_IN_AGAIN_FIELD),
                "{e}"
            );
        }
        // Signing in again (a new provider) ends the rule.
        assert!(s
            .to_builder()
            .host("other.example.net")
            .oauth2(provider())
            .build()
            .is_ok());
    }

    #[test]
    fn updates_keep_set_and_clear_oauth2_secrets() {
        let s = settings();
        // Kept through an unrelated change.
        let kept = s
            .apply(SettingsUpdate {
                sender_name: Some(Some("App".into())),
                oauth2_scopes: Some(vec!["https://mail.google.com/".into(), "openid".into()]),
                ..SettingsUpdate::new()
            })
            .expect("kept");
        let p = parts(&kept);
        assert_eq!(p.refresh_token.expose_secret(), REFRESH);
        assert_eq!(
            p.client_secret.as_ref().map(|c| c.expose_secret()),
            Some(CLIENT_SECRET)
        );
        assert_eq!(p.scopes, ["https://mail.google.com/", "openid"]);
        // Another authorization server: both secrets asked for again.
        for update in [
            SettingsUpdate {
                oauth2_token_url: Some("https://evil.example.net/token".into()),
                ..SettingsUpdate::new()
            },
            SettingsUpdate {
                oauth2_client_id: Some("client-2".into()),
                ..SettingsUpdate::new()
            },
        ] {
            let e = s.apply(update).expect_err("moved");
            assert_eq!(
                e.field("oauth2_refresh_token").map(FieldError::message),
                Some(SIGN_IN_AGAIN_FIELD),
                "{e}"
            );
            assert!(e.field("oauth2_client_secret").is_some(), "{e}");
            assert_eq!(e.len(), 2, "each said once: {e}");
        }
        // ... given again, accepted.
        let moved = s
            .apply(SettingsUpdate {
                oauth2_client_id: Some("client-2".into()),
                oauth2_refresh_token: PasswordChange::Set("1//new-refresh".into()),
                oauth2_client_secret: PasswordChange::Clear,
                ..SettingsUpdate::new()
            })
            .expect("signed in again");
        let p = parts(&moved);
        assert_eq!(
            (p.client_id.as_str(), p.refresh_token.expose_secret()),
            ("client-2", "1//new-refresh")
        );
        assert!(p.client_secret.is_none());
        // A new SMTP host with a kept refresh token: sign in again.
        let e = s
            .apply(SettingsUpdate {
                host: Some("attacker.example.net".into()),
                ..SettingsUpdate::new()
            })
            .expect_err("moved");
        assert!(e.field("oauth2_refresh_token").is_some(), "{e}");
        // Cleared: no AUTH; a password instead: password AUTH.
        let cleared = s
            .apply(SettingsUpdate {
                oauth2_refresh_token: PasswordChange::Clear,
                ..SettingsUpdate::new()
            })
            .expect("cleared");
        assert!(matches!(cleared.auth(), Auth::None) && cleared.oauth2.is_none());
        let password = s
            .apply(SettingsUpdate {
                password: PasswordChange::Set("pw".into()),
                ..SettingsUpdate::new()
            })
            .expect("password");
        assert!(password.oauth2.is_none());
        match password.auth() {
            Auth::Credential(c) => assert_eq!(c.username(), "app@example.com"),
            other => panic!("{other:?}"),
        }
        // From a password to OAuth2 sign-in.
        let from_password = password
            .apply(SettingsUpdate {
                oauth2_token_url: Some(TOKEN_URL.into()),
                oauth2_client_id: Some("client-1".into()),
                oauth2_refresh_token: PasswordChange::Set(REFRESH.into()),
                ..SettingsUpdate::new()
            })
            .expect("switched");
        assert_eq!(parts(&from_password).username, "app@example.com");
        // Both at once is a choice to make.
        let e = s
            .apply(SettingsUpdate {
                password: PasswordChange::Set("pw".into()),
                oauth2_refresh_token: PasswordChange::Set(REFRESH.into()),
                ..SettingsUpdate::new()
            })
            .expect_err("both");
        assert!(e.field("password").is_some(), "{e}");
        // A bad token endpoint is a field error.
        let e = s
            .apply(SettingsUpdate {
                oauth2_token_url: Some("http://oauth2.example.com/token".into()),
                oauth2_refresh_token: PasswordChange::Set(REFRESH.into()),
                oauth2_client_secret: PasswordChange::Clear,
                ..SettingsUpdate::new()
            })
            .expect_err("http");
        assert!(
            e.field("oauth2_token_url")
                .is_some_and(|f| f.message().contains("not https")),
            "{e}"
        );
        assert_clean(&format!("{e} {e:?}"));
    }

    #[cfg(feature = "serde")]
    mod stored {
        use super::*;
        use crate::settings::{OAuth2Data, SealedSettings, SecretKey, StoredSecrets};

        #[test]
        fn data_holds_the_public_half_only() {
            let s = settings();
            let data = s.to_data();
            assert_eq!(data.username.as_deref(), Some("app@example.com"));
            assert!(!data.oauth2);
            assert_eq!(
                data.oauth2_client,
                Some(OAuth2Data::new(
                    TOKEN_URL,
                    "client-1",
                    vec!["https://mail.google.com/".into()]
                ))
            );
            let json = serde_json::to_string(&s).expect("json");
            assert_clean(&json);
            let e = serde_json::from_str::<SmtpSettings>(&json).expect_err("no refresh token");
            assert!(e.to_string().contains("oauth2_refresh_token"), "{e}");
            let secrets = StoredSecrets {
                oauth2_refresh_token: Some(REFRESH.into()),
                oauth2_client_secret: Some(CLIENT_SECRET.into()),
                ..StoredSecrets::default()
            };
            let back = data.clone().into_settings_with(secrets).expect("settings");
            assert_eq!(format!("{back:?}"), format!("{s:?}"));
            let stray = StoredSecrets {
                oauth2_refresh_token: Some(REFRESH.into()),
                ..StoredSecrets::default()
            };
            let mut plain = data;
            plain.oauth2_client = None;
            assert!(plain
                .into_settings_with(stray)
                .expect_err("stray")
                .field("oauth2")
                .is_some());
        }

        #[test]
        fn sealed_round_trip_bound_and_not_swappable() {
            let key = SecretKey::generate().expect("key");
            let sealed = settings().seal(&key, "primary").expect("sealed");
            assert!(sealed.password.is_none());
            assert!(sealed.oauth2_refresh_token.is_some() && sealed.oauth2_client_secret.is_some());
            let json = serde_json::to_string(&sealed).expect("json");
            assert_clean(&json);
            let back: SealedSettings = serde_json::from_str(&json).expect("parse");
            let opened = back.unseal(&key, "primary").expect("opens");
            let p = parts(&opened);
            assert_eq!(p.refresh_token.expose_secret(), REFRESH);
            assert_eq!(
                p.client_secret.as_ref().map(|c| c.expose_secret()),
                Some(CLIENT_SECRET)
            );

            type Edit = fn(&mut SealedSettings);
            let edits: [(&str, Edit); 6] = [
                ("token url", |s| {
                    s.settings.oauth2_client.as_mut().expect("o").token_url =
                        "https://evil.example.net/t".into()
                }),
                ("client id", |s| {
                    s.settings.oauth2_client.as_mut().expect("o").client_id = "other".into()
                }),
                ("host", |s| s.settings.host = "attacker.example.net".into()),
                ("swapped", |s| {
                    std::mem::swap(&mut s.oauth2_refresh_token, &mut s.oauth2_client_secret)
                }),
                ("as the password", |s| {
                    s.password = s.oauth2_refresh_token.clone();
                }),
                ("version 1", |s| {
                    if let Some(t) = s.oauth2_refresh_token.as_mut() {
                        t.version = 1;
                        t.key_check = None;
                    }
                }),
            ];
            for (what, edit) in edits {
                let mut changed = sealed.clone();
                edit(&mut changed);
                let e = changed.unseal(&key, "primary").expect_err(what);
                assert!(e.is_tampered(), "{what}: {e}");
                assert_clean(&format!("{e} {e:?}"));
            }
            // The store's tag covers them: removing one changes the bytes.
            let mut with = Vec::new();
            sealed.authenticated_bytes("primary", &mut with);
            let mut without_secret = sealed.clone();
            without_secret.oauth2_client_secret = None;
            let mut bytes = Vec::new();
            without_secret.authenticated_bytes("primary", &mut bytes);
            assert_ne!(with, bytes);
            // Another key: the key check tells.
            let other = SecretKey::generate().expect("key");
            assert!(sealed.sealed_with_other_key(&other));
            // The data without the sealed token: a field error.
            let mut no_token = sealed.clone();
            no_token.oauth2_refresh_token = None;
            let e = no_token.unseal(&key, "primary").expect_err("no token");
            assert!(e.to_string().contains("oauth2_refresh_token"), "{e}");
        }

        #[test]
        fn the_rotated_refresh_token_is_the_one_sealed() {
            let key = SecretKey::generate().expect("key");
            let s = settings();
            let mut p = parts(&s);
            p.refresh_token = "1//rotated".into();
            let rotated = p.provider().expect("provider");
            let mut moved = s.clone();
            moved.auth = Auth::Provider(rotated.clone());
            moved.oauth2 = Some(rotated);
            let opened = moved
                .seal(&key, "primary")
                .expect("sealed")
                .unseal(&key, "primary")
                .expect("opens");
            assert_eq!(parts(&opened).refresh_token.expose_secret(), "1//rotated");
        }
    }
}
