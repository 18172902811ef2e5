//! What an administrator decides about the mail itself, beside the relay:
//! redirect to report addresses ([`Redirect`]) and the attachment size
//! limit ([`AttachmentLimit`]). Part of [`SmtpSettings`](super::SmtpSettings),
//! so a saved profile keeps them and a following [`Mailer`](crate::Mailer)
//! applies them on reload.

use std::sync::Arc;

use crate::error::Error;
use crate::mailer::ORIGINAL_RECIPIENTS_HEADER;
use crate::proto::address::Address;
use crate::proto::session::{Envelope, Recipient};

/// The default of [`SmtpSettingsBuilder::max_deliveries_per_connection`](super::SmtpSettingsBuilder::max_deliveries_per_connection).
pub const DEFAULT_MAX_DELIVERIES_PER_CONNECTION: usize = 20;

/// The largest value [`SmtpSettingsBuilder::max_deliveries_per_connection`](super::SmtpSettingsBuilder::max_deliveries_per_connection)
/// accepts.
pub const MAX_DELIVERIES_PER_CONNECTION: usize = 100_000;

/// A report address for [`Redirect`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
#[non_exhaustive]
pub struct ReportAddress {
    /// The mailbox.
    pub address: Address,
    /// Whether redirected mail goes to it (absent in stored data: true).
    #[cfg_attr(feature = "serde", serde(default = "enabled_by_default"))]
    pub enabled: bool,
}

#[cfg(feature = "serde")]
fn enabled_by_default() -> bool {
    true
}

/// Redirect mode: send every message only to report addresses (testing and
/// staging setups), keeping the original recipients in an
/// `X-Relaymail-Original-Recipients` header. Set with
/// [`SmtpSettingsBuilder::redirect`](super::SmtpSettingsBuilder::redirect).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
#[non_exhaustive]
pub struct Redirect {
    /// Whether redirect is on.
    #[cfg_attr(feature = "serde", serde(default))]
    pub enabled: bool,
    /// The report addresses, each enabled or not.
    #[cfg_attr(feature = "serde", serde(default))]
    pub addresses: Vec<ReportAddress>,
}

impl ReportAddress {
    /// An enabled report address.
    pub fn new(address: Address) -> ReportAddress {
        ReportAddress {
            address,
            enabled: true,
        }
    }

    /// The same address, enabled or not.
    pub fn with_enabled(mut self, enabled: bool) -> ReportAddress {
        self.enabled = enabled;
        self
    }
}

impl Redirect {
    /// Redirect switched on or off, with these report addresses (each
    /// enabled or not).
    pub fn new(enabled: bool, addresses: Vec<ReportAddress>) -> Redirect {
        Redirect { enabled, addresses }
    }

    /// Redirect switched on, to these addresses (all enabled).
    pub fn to(addresses: impl IntoIterator<Item = Address>) -> Redirect {
        Redirect {
            enabled: true,
            addresses: addresses.into_iter().map(ReportAddress::new).collect(),
        }
    }

    /// Whether this is the default: off, without report addresses.
    pub fn is_default(&self) -> bool {
        *self == Redirect::default()
    }

    fn targets(&self) -> impl Iterator<Item = &Address> {
        self.addresses.iter().filter(|a| a.enabled).map(|a| &a.address)
    }

    /// Report addresses are valid by type; what is left to check is that
    /// redirect on has somewhere to send.
    pub(crate) fn problem(&self) -> Option<&'static str> {
        (self.enabled && self.targets().next().is_none()).then_some(
            "redirect is on but no report address is enabled; refusing to send to the real recipients: enable a report address, or switch redirect off",
        )
    }

    /// Rewrites the envelope to the report addresses and records the
    /// original recipients in a header.
    pub(crate) fn apply(&self, envelope: &mut Envelope, content: &mut Arc<[u8]>) -> Result<(), Error> {
        if let Some(problem) = self.problem() {
            return Err(Error::config(problem).with_hint("enable a report address, or switch redirect off"));
        }
        let originals: Vec<String> = envelope
            .recipients()
            .iter()
            .map(|r| r.address.to_smtp())
            .collect();
        let mut header = format!("{ORIGINAL_RECIPIENTS_HEADER}:");
        let mut line_len = header.len();
        for (i, addr) in originals.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            // Fold long lists (RFC 5322 §2.2.3); addresses were validated:
            // no CR, LF or other control bytes can reach the header.
            if line_len + sep.len() + 1 + addr.len() > 76 && i > 0 {
                header.push_str(sep);
                header.push_str("\r\n ");
                line_len = 1;
            } else {
                header.push_str(sep);
                header.push(' ');
                line_len += sep.len() + 1;
            }
            header.push_str(addr);
            line_len += addr.len();
        }
        header.push_str("\r\n");
        let mut bytes = Vec::with_capacity(header.len() + content.len());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(content);
        *content = bytes.into();
        envelope.set_recipients(self.targets().cloned().map(Recipient::new).collect())?;
        Ok(())
    }
}

/// The attachment size limit of [`Email`](crate::Email)s sent through a
/// [`Mailer`](crate::Mailer): attachments larger than `max_size` bytes are
/// refused, or (with `links`) stored and replaced by download links. The
/// store that keeps them is the application's, not a setting:
/// [`MailerBuilder::attachment_store`](crate::MailerBuilder::attachment_store);
/// settings asking for links on a mailer without a store are refused by
/// [`MailerBuilder::build`](crate::MailerBuilder::build) and
/// [`Mailer::reload`](crate::Mailer::reload).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
#[non_exhaustive]
pub struct AttachmentLimit {
    /// Attachments larger than this many bytes are refused or linked;
    /// `None`: no limit (the server's SIZE still applies).
    #[cfg_attr(feature = "serde", serde(default))]
    pub max_size: Option<u64>,
    /// Whether attachments over the limit are sent as links (true) or the
    /// email is refused (false).
    #[cfg_attr(feature = "serde", serde(default))]
    pub links: bool,
}

impl AttachmentLimit {
    /// No limit (the default).
    pub fn none() -> AttachmentLimit {
        AttachmentLimit::default()
    }

    /// Refuse emails with an attachment over `max_size` bytes.
    pub fn refuse_above(max_size: u64) -> AttachmentLimit {
        AttachmentLimit {
            max_size: Some(max_size),
            links: false,
        }
    }

    /// Send attachments over `max_size` bytes as links (the mailer needs an
    /// attachment store).
    pub fn links_above(max_size: u64) -> AttachmentLimit {
        AttachmentLimit {
            max_size: Some(max_size),
            links: true,
        }
    }

    /// Whether this is the default: no limit.
    pub fn is_default(&self) -> bool {
        *self == AttachmentLimit::default()
    }

    /// Whether attachments may be sent as links (a limit with `links`).
    pub fn needs_store(&self) -> bool {
        self.links && self.max_size.is_some()
    }

    pub(crate) fn problem(&self) -> Option<&'static str> {
        (self.links && self.max_size.is_none())
            .then_some("attachments as links need a size limit: set max_size, or switch links off")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::address::AddressPolicy;
    use crate::settings::{FieldError, PasswordChange, SettingsUpdate, SmtpSettings, SmtpSettingsBuilder};

    fn base() -> SmtpSettingsBuilder {
        SmtpSettings::builder()
            .host("smtp.example.com")
            .sender("noreply@example.com")
            .credentials("app", "Kept-Pa55word")
    }

    fn addr(text: &str) -> Address {
        text.parse().expect("address")
    }

    fn fields(e: &crate::settings::SettingsErrors) -> Vec<&'static str> {
        e.iter().map(FieldError::field).collect()
    }

    fn password(s: &SmtpSettings) -> Option<String> {
        use secrecy::ExposeSecret;
        match s.auth() {
            crate::settings::Auth::Credential(crate::proto::auth::Credential::Password {
                password, ..
            }) => Some(password.expose_secret().to_owned()),
            _ => None,
        }
    }

    #[test]
    fn defaults() {
        let s = base().build().expect("settings");
        assert_eq!(s.max_deliveries_per_connection(), 20);
        assert_eq!(s.redirect(), &Redirect::default());
        assert_eq!(s.address_policy(), AddressPolicy::Strict);
        assert_eq!(s.attachment_limit(), AttachmentLimit::none());
        assert_eq!(
            AttachmentLimit::default(),
            AttachmentLimit {
                max_size: None,
                links: false
            }
        );
    }

    #[test]
    fn each_new_field_is_validated_with_its_field_name() {
        let e = base().max_deliveries_per_connection(0).build().expect_err("0");
        assert_eq!(fields(&e), ["max_deliveries_per_connection"]);
        assert!(
            e.iter().next().expect("one").message().contains("at least 1"),
            "{e}"
        );
        let e = base()
            .max_deliveries_per_connection(100_001)
            .build()
            .expect_err("absurd");
        assert_eq!(fields(&e), ["max_deliveries_per_connection"]);
        assert!(
            e.to_string().contains("100001") && e.to_string().contains("100000"),
            "{e}"
        );
        for n in [1, 20, 100_000] {
            let s = base().max_deliveries_per_connection(n).build().expect("in range");
            assert_eq!(s.max_deliveries_per_connection(), n);
        }

        let none_enabled = Redirect::new(
            true,
            vec![ReportAddress::new(addr("qa@example.com")).with_enabled(false)],
        );
        let e = base()
            .redirect(none_enabled.clone())
            .build()
            .expect_err("nowhere to send");
        assert_eq!(fields(&e), ["redirect"]);
        assert!(e.to_string().contains("no report address is enabled"), "{e}");
        let e = base()
            .redirect(Redirect::new(true, vec![]))
            .build()
            .expect_err("empty");
        assert_eq!(fields(&e), ["redirect"]);
        // Off with addresses (enabled or not) is fine: the page keeps them.
        let off = Redirect::new(false, none_enabled.addresses.clone());
        assert_eq!(
            base().redirect(off.clone()).build().expect("off").redirect(),
            &off
        );
        let on = Redirect::to([addr("qa@example.com")]);
        assert_eq!(base().redirect(on.clone()).build().expect("on").redirect(), &on);

        let e = base()
            .attachment_limit(AttachmentLimit {
                max_size: None,
                links: true,
            })
            .build()
            .expect_err("links without a size");
        assert_eq!(fields(&e), ["attachment_limit"]);
        for limit in [
            AttachmentLimit::none(),
            AttachmentLimit::refuse_above(10),
            AttachmentLimit::links_above(10),
        ] {
            assert_eq!(
                base()
                    .attachment_limit(limit)
                    .build()
                    .expect("valid")
                    .attachment_limit(),
                limit
            );
        }
        assert!(AttachmentLimit::links_above(1).needs_store());
        assert!(!AttachmentLimit::refuse_above(1).needs_store());

        let s = base()
            .address_policy(AddressPolicy::Lenient)
            .build()
            .expect("lenient");
        assert_eq!(s.address_policy(), AddressPolicy::Lenient);

        // Reported together, with the other fields' problems.
        let e = base()
            .host("")
            .max_deliveries_per_connection(0)
            .redirect(Redirect::new(true, vec![]))
            .attachment_limit(AttachmentLimit {
                max_size: None,
                links: true,
            })
            .build()
            .expect_err("four");
        assert_eq!(
            fields(&e),
            [
                "host",
                "max_deliveries_per_connection",
                "redirect",
                "attachment_limit"
            ]
        );
    }

    #[test]
    fn to_builder_keeps_them() {
        let s = base()
            .max_deliveries_per_connection(3)
            .redirect(Redirect::to([addr("qa@example.com")]))
            .address_policy(AddressPolicy::Lenient)
            .attachment_limit(AttachmentLimit::links_above(5))
            .build()
            .expect("settings");
        let again = s.to_builder().build().expect("again");
        assert_eq!(again.max_deliveries_per_connection(), 3);
        assert_eq!(again.redirect(), s.redirect());
        assert_eq!(again.address_policy(), AddressPolicy::Lenient);
        assert_eq!(again.attachment_limit(), AttachmentLimit::links_above(5));
    }

    #[test]
    fn settings_update_applies_them_and_keeps_the_password() {
        let stored = base().build().expect("settings");
        let mut update = SettingsUpdate::new();
        update.max_deliveries_per_connection = Some(5);
        update.redirect = Some(Redirect::to([addr("qa@example.com")]));
        update.address_policy = Some(AddressPolicy::Lenient);
        update.attachment_limit = Some(AttachmentLimit::refuse_above(1_000));
        let s = stored.apply(update).expect("applied");
        assert_eq!(s.max_deliveries_per_connection(), 5);
        assert_eq!(s.redirect(), &Redirect::to([addr("qa@example.com")]));
        assert_eq!(s.address_policy(), AddressPolicy::Lenient);
        assert_eq!(s.attachment_limit(), AttachmentLimit::refuse_above(1_000));
        // Not a server change: the kept password stays.
        assert_eq!(password(&s).as_deref(), Some("Kept-Pa55word"));
        assert!(matches!(SettingsUpdate::new().password, PasswordChange::Keep));

        // An update that leaves them out leaves them as they are.
        let mut other = SettingsUpdate::new();
        other.sender_name = Some(Some("Example".into()));
        let t = s.apply(other).expect("applied");
        assert_eq!(t.max_deliveries_per_connection(), 5);
        assert_eq!(t.redirect(), s.redirect());
        assert_eq!(t.address_policy(), AddressPolicy::Lenient);
        assert_eq!(t.attachment_limit(), AttachmentLimit::refuse_above(1_000));

        // Errors are collected with the others; nothing is half applied.
        let mut bad = SettingsUpdate::new();
        bad.sender = Some("not an address".into());
        bad.max_deliveries_per_connection = Some(0);
        bad.redirect = Some(Redirect::new(true, vec![]));
        bad.attachment_limit = Some(AttachmentLimit {
            max_size: None,
            links: true,
        });
        let e = s.apply(bad).expect_err("invalid");
        assert_eq!(
            fields(&e),
            [
                "sender",
                "max_deliveries_per_connection",
                "redirect",
                "attachment_limit"
            ]
        );
        assert_eq!(s.max_deliveries_per_connection(), 5);
    }

    #[cfg(feature = "serde")]
    mod data {
        use super::*;
        use crate::settings::SettingsData;

        fn with_policies() -> SmtpSettings {
            SmtpSettings::builder()
                .host("smtp.example.com")
                .sender("noreply@example.com")
                .max_deliveries_per_connection(7)
                .redirect(Redirect::new(
                    true,
                    vec![
                        ReportAddress::new(addr("qa@example.com")),
                        ReportAddress::new(
                            Address::parse("john..doe@example.com", AddressPolicy::Lenient).expect("lenient"),
                        )
                        .with_enabled(false),
                    ],
                ))
                .address_policy(AddressPolicy::Lenient)
                .attachment_limit(AttachmentLimit::links_above(5_000_000))
                .build()
                .expect("settings")
        }

        fn same(a: &SmtpSettings, b: &SmtpSettings) {
            assert_eq!(
                a.max_deliveries_per_connection(),
                b.max_deliveries_per_connection()
            );
            assert_eq!(a.redirect(), b.redirect());
            assert_eq!(a.address_policy(), b.address_policy());
            assert_eq!(a.attachment_limit(), b.attachment_limit());
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
        }

        #[test]
        fn json_and_toml_round_trip_with_the_documented_names() {
            let s = with_policies();
            let json = serde_json::to_value(&s).expect("json");
            assert_eq!(json["max_deliveries_per_connection"], 7);
            assert_eq!(
                json["redirect"],
                serde_json::json!({
                    "enabled": true,
                    "addresses": [
                        {"address": "qa@example.com", "enabled": true},
                        {"address": s.redirect().addresses[1].address.to_string(), "enabled": false},
                    ]
                })
            );
            assert_eq!(json["address_policy"], "lenient");
            assert_eq!(
                json["attachment_limit"],
                serde_json::json!({"max_size": 5_000_000, "links": true})
            );
            let back: SmtpSettings = serde_json::from_value(json).expect("back");
            same(&back, &s);
            let toml_text = toml::to_string(&s).expect("toml");
            let back: SmtpSettings = toml::from_str(&toml_text).expect("toml back");
            same(&back, &s);
            let data = s.to_data();
            same(&data.clone().into_settings(None).expect("settings"), &s);
        }

        #[test]
        fn defaults_are_not_written_and_absent_fields_are_the_defaults() {
            let plain = SmtpSettings::builder()
                .host("smtp.example.com")
                .sender("noreply@example.com")
                .build()
                .expect("settings");
            let json = serde_json::to_value(&plain).expect("json");
            for key in [
                "max_deliveries_per_connection",
                "redirect",
                "address_policy",
                "attachment_limit",
            ] {
                assert!(
                    json.get(key).is_none(),
                    "{key} is not written when default: {json}"
                );
            }
            // JSON written before these fields existed.
            let old = r#"{"host":"smtp.example.com","port":587,"tls":"starttls","sender":"noreply@example.com",
                "timeouts":{"connect":10.0,"greeting":30.0,"tls_handshake":30.0,"command":30.0,"data":60.0,"final_reply":120.0},
                "webpki_roots":true,"pipelining":true,"chunking":true}"#;
            let data: SettingsData = serde_json::from_str(old).expect("old data");
            assert_eq!(data.max_deliveries_per_connection, 20);
            assert!(data.redirect.is_default());
            let s = data.into_settings(None).expect("settings");
            assert_eq!(s.max_deliveries_per_connection(), 20);
            assert_eq!(s.address_policy(), AddressPolicy::Strict);
            assert_eq!(s.attachment_limit(), AttachmentLimit::none());
            assert!(!s.redirect().enabled);
            // TOML too.
            let toml_text = toml::to_string(&plain).expect("toml");
            assert!(
                !toml_text.contains("redirect") && !toml_text.contains("max_deliveries"),
                "{toml_text}"
            );
            let back: SmtpSettings = toml::from_str(&toml_text).expect("toml");
            assert_eq!(back.max_deliveries_per_connection(), 20);
        }

        #[test]
        fn stored_values_are_checked_like_typed_ones() {
            let mut data = with_policies().to_data();
            data.max_deliveries_per_connection = 0;
            data.redirect = Redirect::new(true, vec![]);
            let e = data.into_settings(None).expect_err("invalid");
            assert_eq!(fields(&e), ["max_deliveries_per_connection", "redirect"]);
            let e = serde_json::from_str::<SettingsData>(
                r#"{"host":"h.example.com","port":25,"tls":"none","sender":"a@example.com",
                "timeouts":{"connect":1.0,"greeting":1.0,"tls_handshake":1.0,"command":1.0,"data":1.0,"final_reply":1.0},
                "webpki_roots":true,"pipelining":true,"chunking":true,"address_policy":"sloppy"}"#,
            )
            .expect_err("unknown policy");
            assert!(e.to_string().contains("sloppy"), "{e}");
        }
    }
}
