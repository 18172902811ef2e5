//! The edit form: its values, reading a submitted form into a
//! [`SettingsUpdate`], and the handlers for saving and the test buttons.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::extract::{Multipart, Path};
use axum::http::StatusCode;
use axum::response::Response;
use secrecy::SecretString;

use super::{encode_segment, views, Ctx};
use crate::diagnose::Report;
use crate::mailer::{Redirect, ReportAddress};
use crate::profiles::{Profile, Profiles};
use crate::proto::address::{Address, AddressPolicy};
use crate::settings::{
    AttachmentLimit, PasswordChange, SettingsUpdate, SmtpSettings, TlsMode,
    DEFAULT_MAX_DELIVERIES_PER_CONNECTION,
};

/// Rows for report addresses beyond the stored ones (to add new ones).
const EMPTY_REPORT_ROWS: usize = 2;
/// The most report address rows a form may send.
const MAX_REPORT_ROWS: usize = 64;
/// The largest uploaded or pasted certificate file.
const MAX_PEM: usize = 256 * 1024;
/// The largest other field.
const MAX_FIELD: usize = 4096;

/// Every value the form shows (never a password).
#[derive(Clone, Debug, Default)]
pub(crate) struct Values {
    pub(crate) name: String,
    pub(crate) host: String,
    pub(crate) port: String,
    pub(crate) tls: String,
    pub(crate) sender: String,
    pub(crate) sender_name: String,
    pub(crate) helo_name: String,
    pub(crate) timeout: String,
    pub(crate) auth: bool,
    pub(crate) username: String,
    pub(crate) allow_plaintext_auth: bool,
    pub(crate) ca_pem: String,
    pub(crate) max_deliveries: String,
    pub(crate) redirect_enabled: bool,
    pub(crate) reports: Vec<(String, bool)>,
    pub(crate) address_policy: String,
    pub(crate) attachment_limit: String,
    pub(crate) attachment_links: bool,
    pub(crate) enabled: bool,
    pub(crate) test_on_save: bool,
    pub(crate) test_from: String,
    pub(crate) test_to: String,
    /// Whether a password is stored (the field then says "unchanged").
    pub(crate) has_password: bool,
}

impl Values {
    /// A new profile's form.
    fn new_profile() -> Values {
        Values {
            tls: TlsMode::StartTls.as_str().to_owned(),
            timeout: "30".to_owned(),
            auth: true,
            max_deliveries: DEFAULT_MAX_DELIVERIES_PER_CONNECTION.to_string(),
            address_policy: "strict".to_owned(),
            enabled: true,
            reports: vec![(String::new(), true); EMPTY_REPORT_ROWS],
            ..Values::default()
        }
    }

    /// A stored profile's form.
    fn from_profile(profile: &Profile) -> Values {
        let s = profile.settings();
        let data = s.to_data();
        let mut reports: Vec<(String, bool)> = s
            .redirect()
            .addresses
            .iter()
            .map(|r| (r.address.to_string(), r.enabled))
            .collect();
        reports.extend(std::iter::repeat_n((String::new(), true), EMPTY_REPORT_ROWS));
        let limit = s.attachment_limit();
        Values {
            name: profile.name().to_owned(),
            host: data.host,
            port: data.port.to_string(),
            tls: data.tls,
            sender: data.sender,
            sender_name: data.sender_name.unwrap_or_default(),
            helo_name: data.helo_name.unwrap_or_default(),
            timeout: seconds(data.timeouts.command),
            auth: data.username.is_some(),
            username: data.username.unwrap_or_default(),
            allow_plaintext_auth: data.allow_plaintext_auth,
            ca_pem: data.extra_roots_pem.concat(),
            max_deliveries: s.max_deliveries_per_connection().to_string(),
            redirect_enabled: s.redirect().enabled,
            reports,
            address_policy: match s.address_policy() {
                AddressPolicy::Lenient => "lenient",
                _ => "strict",
            }
            .to_owned(),
            attachment_limit: limit.max_size.map(|n| n.to_string()).unwrap_or_default(),
            attachment_links: limit.links,
            enabled: profile.enabled(),
            test_on_save: profile.test_on_save(),
            test_from: String::new(),
            test_to: String::new(),
            has_password: signs_in(s),
        }
    }
}

/// Whether `settings` hold a sign-in secret (a password, or a credential
/// provider such as OAuth2 sign-in) that an empty password field keeps.
fn signs_in(settings: &SmtpSettings) -> bool {
    !matches!(settings.auth(), crate::settings::Auth::None)
}

fn seconds(s: f64) -> String {
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    }
}

/// What the form page shows besides the values.
#[derive(Debug, Default)]
pub(crate) struct FormState {
    /// The profile's stored name (`None`: a new profile).
    pub(crate) stored_name: Option<String>,
    /// The store version the form was opened at.
    pub(crate) version: u64,
    /// Errors by input id.
    pub(crate) errors: BTreeMap<String, String>,
    /// Errors not tied to one field.
    pub(crate) form_errors: Vec<String>,
    /// A conflict: the saved values that differ from the form's, as
    /// (field label, saved value, form value).
    pub(crate) conflict: Option<Vec<(&'static str, String, String)>>,
    /// A test's report.
    pub(crate) report: Option<Report>,
    /// What the test was ("test": connection, "send": email).
    pub(crate) report_kind: &'static str,
    /// A note beside the password after a test with a typed password.
    pub(crate) password_note: bool,
}

pub(super) async fn new_form(ctx: Ctx) -> Response {
    match ctx.inner.store.load() {
        Ok(profiles) => {
            let state = FormState {
                version: profiles.version(),
                ..FormState::default()
            };
            ctx.page(StatusCode::OK, views::form(&ctx, &Values::new_profile(), &state))
        }
        Err(e) => super::error_page(&ctx, &e),
    }
}

pub(super) async fn edit_form(ctx: Ctx, Path(name): Path<String>) -> Response {
    let profiles = match ctx.inner.store.load() {
        Ok(p) => p,
        Err(e) => return super::error_page(&ctx, &e),
    };
    let Some(profile) = profiles.get(&name) else {
        return super::not_found(ctx).await;
    };
    let state = FormState {
        stored_name: Some(profile.name().to_owned()),
        version: profiles.version(),
        ..FormState::default()
    };
    ctx.page(
        StatusCode::OK,
        views::form(&ctx, &Values::from_profile(profile), &state),
    )
}

pub(super) async fn submit_new(ctx: Ctx, multipart: Multipart) -> Response {
    submit(ctx, None, multipart).await
}

pub(super) async fn submit_edit(ctx: Ctx, Path(name): Path<String>, multipart: Multipart) -> Response {
    submit(ctx, Some(name), multipart).await
}

/// The submitted fields.
#[derive(Default)]
struct Submitted {
    text: HashMap<String, String>,
    /// The uploaded certificate file, when one was chosen.
    ca_file: Option<String>,
    /// The typed password (never rendered, never logged).
    password: Option<SecretString>,
}

impl Submitted {
    fn get(&self, name: &str) -> &str {
        self.text.get(name).map(|s| s.trim()).unwrap_or("")
    }

    fn checked(&self, name: &str) -> bool {
        self.text.contains_key(name)
    }
}

/// Reads the multipart body; `Err` with a message when it is not a form
/// this page sent (too large, malformed).
async fn read(mut multipart: Multipart) -> Result<Submitted, String> {
    let mut out = Submitted::default();
    let too_large = |name: &str| format!("the field {name:?} is too large");
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| format!("the form could not be read: {}", e.body_text()))?
    {
        let name = field.name().unwrap_or("").to_owned();
        let is_file = field.file_name().is_some();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| format!("the form could not be read: {}", e.body_text()))?;
        let limit = if matches!(name.as_str(), "ca_pem" | "ca_file") {
            MAX_PEM
        } else {
            MAX_FIELD
        };
        if bytes.len() > limit {
            return Err(too_large(&name));
        }
        if name == "ca_file" {
            if is_file && !bytes.is_empty() {
                let text = String::from_utf8(bytes.to_vec())
                    .map_err(|_| "the certificate file is not a PEM text file".to_owned())?;
                out.ca_file = Some(text);
            }
            continue;
        }
        let text =
            String::from_utf8(bytes.to_vec()).map_err(|_| format!("the field {name:?} is not text"))?;
        if name == "password" {
            if !text.is_empty() {
                out.password = Some(SecretString::from(text));
            }
            continue;
        }
        if out.text.len() > 256 {
            return Err("the form has too many fields".to_owned());
        }
        out.text.insert(name, text);
    }
    Ok(out)
}

/// The form's values as shown again (the password never).
fn values_of(s: &Submitted, has_password: bool) -> Values {
    let mut reports = Vec::new();
    for i in 0..MAX_REPORT_ROWS {
        let key = format!("report_address_{i}");
        if !s.text.contains_key(&key) {
            break;
        }
        let address = s.get(&key).to_owned();
        if !address.is_empty() {
            reports.push((address, s.checked(&format!("report_enabled_{i}"))));
        }
    }
    reports.extend(std::iter::repeat_n((String::new(), true), EMPTY_REPORT_ROWS));
    Values {
        name: s.get("name").to_owned(),
        host: s.get("host").to_owned(),
        port: s.get("port").to_owned(),
        tls: s.get("tls").to_owned(),
        sender: s.get("sender").to_owned(),
        sender_name: s.get("sender_name").to_owned(),
        helo_name: s.get("helo_name").to_owned(),
        timeout: s.get("timeout").to_owned(),
        auth: s.checked("auth"),
        username: s.get("username").to_owned(),
        allow_plaintext_auth: s.checked("allow_plaintext_auth"),
        ca_pem: s.ca_file.clone().unwrap_or_else(|| s.get("ca_pem").to_owned()),
        max_deliveries: s.get("max_deliveries").to_owned(),
        redirect_enabled: s.checked("redirect_enabled"),
        reports,
        address_policy: s.get("address_policy").to_owned(),
        attachment_limit: s.get("attachment_limit").to_owned(),
        attachment_links: s.checked("attachment_links"),
        enabled: s.checked("enabled"),
        test_on_save: s.checked("test_on_save"),
        test_from: s.get("test_from").to_owned(),
        test_to: s.get("test_to").to_owned(),
        has_password,
    }
}

/// The input a [`SettingsErrors`](crate::settings::SettingsErrors) field
/// belongs to (`None`: shown above the form).
fn input_for(field: &str) -> Option<&'static str> {
    Some(match field {
        "host" | "destination" => "host",
        "port" => "port",
        "tls" => "tls",
        "sender" => "sender",
        "sender_name" => "sender_name",
        "helo_name" => "helo_name",
        "timeouts" | "timeout" => "timeout",
        "username" => "username",
        "password" | "auth_mechanisms" => "password",
        "allow_plaintext_auth" => "allow_plaintext_auth",
        "extra_roots" => "ca_pem",
        "max_deliveries_per_connection" => "max_deliveries",
        "redirect" => "redirect_enabled",
        "address_policy" => "address_policy",
        "attachment_limit" => "attachment_limit",
        _ => return None,
    })
}

/// The update the form asks for, or the errors of fields it could not read.
fn update_of(s: &Submitted, stored: Option<&SmtpSettings>) -> (SettingsUpdate, BTreeMap<String, String>) {
    let mut errors = BTreeMap::new();
    let mut u = SettingsUpdate::new();
    u.host = Some(s.get("host").to_owned());
    let tls = match s.get("tls").parse::<TlsMode>() {
        Ok(t) => t,
        Err(e) => {
            errors.insert("tls".to_owned(), e.to_string());
            TlsMode::StartTls
        }
    };
    u.tls = Some(tls);
    u.port = match s.get("port") {
        "" => Some(u32::from(tls.default_port())),
        p => match p.parse::<u32>() {
            Ok(p) => Some(p),
            Err(_) => {
                errors.insert("port".to_owned(), format!("{p:?} is not a port: use 1 to 65535"));
                None
            }
        },
    };
    u.sender = Some(s.get("sender").to_owned());
    u.sender_name = Some(Some(s.get("sender_name").to_owned()).filter(|n| !n.is_empty()));
    u.helo_name = Some(Some(s.get("helo_name").to_owned()).filter(|n| !n.is_empty()));
    match s.get("timeout") {
        "" => {}
        t => match t.parse::<f64>() {
            Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 3600.0 => {
                u.timeout = Some(Duration::from_secs_f64(secs));
            }
            _ => {
                errors.insert(
                    "timeout".to_owned(),
                    format!("{t:?} is not a timeout: give seconds, more than 0 and at most 3600"),
                );
            }
        },
    }
    let had_password = stored.is_some_and(signs_in);
    if !s.checked("auth") || s.checked("password_clear") {
        u.password = PasswordChange::Clear;
    } else {
        u.username = Some(s.get("username").to_owned());
        u.password = match &s.password {
            Some(p) => PasswordChange::Set(p.clone()),
            None if had_password => PasswordChange::Keep,
            None => {
                errors.insert("password".to_owned(), "enter the password".to_owned());
                PasswordChange::Keep
            }
        };
    }
    u.allow_plaintext_auth = Some(s.checked("allow_plaintext_auth"));
    let pem = s.ca_file.as_deref().unwrap_or_else(|| s.get("ca_pem"));
    u.extra_roots_pem = Some(pem.trim().to_owned());
    match s.get("max_deliveries") {
        "" => u.max_deliveries_per_connection = Some(DEFAULT_MAX_DELIVERIES_PER_CONNECTION),
        n => match n.parse::<usize>() {
            Ok(n) => u.max_deliveries_per_connection = Some(n),
            Err(_) => {
                errors.insert(
                    "max_deliveries".to_owned(),
                    format!("{n:?} is not a number of deliveries: use a whole number, at least 1"),
                );
            }
        },
    }
    let mut addresses = Vec::new();
    for i in 0..MAX_REPORT_ROWS {
        let key = format!("report_address_{i}");
        if !s.text.contains_key(&key) {
            break;
        }
        let text = s.get(&key);
        if text.is_empty() {
            continue;
        }
        match Address::parse(text, AddressPolicy::Strict) {
            Ok(a) => {
                addresses.push(ReportAddress::new(a).with_enabled(s.checked(&format!("report_enabled_{i}"))))
            }
            Err(e) => {
                errors.insert(key, format!("not a valid address: {}", e.reason()));
            }
        }
    }
    u.redirect = Some(Redirect::new(s.checked("redirect_enabled"), addresses));
    u.address_policy = match s.get("address_policy") {
        "lenient" => Some(AddressPolicy::Lenient),
        "strict" | "" => Some(AddressPolicy::Strict),
        other => {
            errors.insert(
                "address_policy".to_owned(),
                format!("{other:?} is not an address policy: use strict or lenient"),
            );
            None
        }
    };
    let links = s.checked("attachment_links");
    u.attachment_limit = match s.get("attachment_limit") {
        "" if links => {
            errors.insert(
                "attachment_limit".to_owned(),
                "give the size above which attachments are sent as links".to_owned(),
            );
            None
        }
        "" => Some(AttachmentLimit::none()),
        n => match n.parse::<u64>() {
            Ok(n) if links => Some(AttachmentLimit::links_above(n)),
            Ok(n) => Some(AttachmentLimit::refuse_above(n)),
            Err(_) => {
                errors.insert(
                    "attachment_limit".to_owned(),
                    format!("{n:?} is not a size: give a number of bytes, or leave it empty for no limit"),
                );
                None
            }
        },
    };
    (u, errors)
}

/// A base for a new profile's settings: every field the form has is set by
/// the update; the others keep these defaults.
fn blank() -> Result<SmtpSettings, crate::settings::SettingsErrors> {
    SmtpSettings::builder()
        .host("localhost")
        .sender("postmaster@localhost")
        .build()
}

/// The settings the form describes, or its errors by input id.
fn candidate(
    s: &Submitted,
    stored: Option<&SmtpSettings>,
) -> Result<SmtpSettings, (BTreeMap<String, String>, Vec<String>)> {
    let (update, mut errors) = update_of(s, stored);
    let base = match stored {
        Some(b) => b.clone(),
        None => blank().map_err(|e| (BTreeMap::new(), e.iter().map(ToString::to_string).collect()))?,
    };
    let mut form_errors = Vec::new();
    match base.apply(update) {
        Ok(settings) if errors.is_empty() => return Ok(settings),
        Ok(_) => {}
        Err(settings_errors) => {
            for e in settings_errors.iter() {
                match input_for(e.field()) {
                    // A field the form could not read keeps its own error.
                    Some(input) => {
                        errors
                            .entry(input.to_owned())
                            .or_insert_with(|| e.message().to_owned());
                    }
                    None => form_errors.push(e.to_string()),
                }
            }
        }
    }
    Err((errors, form_errors))
}

async fn submit(ctx: Ctx, stored_name: Option<String>, multipart: Multipart) -> Response {
    let submitted = match read(multipart).await {
        Ok(s) => s,
        Err(message) => {
            // The token may be in the part that could not be read: refuse
            // like a bad token, without touching anything.
            return ctx.page(
                StatusCode::BAD_REQUEST,
                views::message(&ctx, "The form could not be read", &message),
            );
        }
    };
    if !ctx.verify(submitted.text.get("csrf").map(String::as_str)) {
        return ctx.forbidden();
    }
    let store = &ctx.inner.store;
    let mut profiles = match store.load() {
        Ok(p) => p,
        Err(e) => return super::error_page(&ctx, &e),
    };
    let stored = stored_name.as_deref().and_then(|n| profiles.get(n)).cloned();
    if stored_name.is_some() && stored.is_none() {
        return super::not_found(ctx).await;
    }
    let stored_settings = stored.as_ref().map(Profile::settings);
    let form_version = submitted.get("version").parse::<u64>().ok();
    let mut state = FormState {
        stored_name: stored_name.clone(),
        version: form_version.unwrap_or(0),
        ..FormState::default()
    };
    let mut values = values_of(&submitted, stored_settings.is_some_and(signs_in));
    let name = submitted.get("name").to_owned();
    if name.is_empty() {
        state
            .errors
            .insert("name".to_owned(), "a profile needs a name".to_owned());
    } else if name.chars().any(char::is_control) {
        state.errors.insert(
            "name".to_owned(),
            "a profile name may not contain control characters".to_owned(),
        );
    }
    let action = submitted.get("action").to_owned();
    let settings = match candidate(&submitted, stored_settings) {
        Ok(s) if state.errors.is_empty() => Some(s),
        Ok(_) => None,
        Err((errors, form_errors)) => {
            state.errors.extend(errors);
            state.form_errors.extend(form_errors);
            None
        }
    };
    match action.as_str() {
        "test" | "send" => {
            let Some(settings) = settings else {
                return ctx.page(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    views::form(&ctx, &values, &state),
                );
            };
            state.password_note = submitted.password.is_some();
            if action == "send" {
                let to = submitted.get("test_to");
                if to.is_empty() {
                    state.errors.insert(
                        "test_to".to_owned(),
                        "enter the address to send the test email to".to_owned(),
                    );
                    return ctx.page(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        views::form(&ctx, &values, &state),
                    );
                }
                // Unsaved profiles share one allowance: a new name per
                // attempt must not be a way around the limit.
                let key = stored_name.clone().unwrap_or_else(|| "\0new profile".to_owned());
                if let Err(wait) = ctx.inner.allow_test_email(&key) {
                    state.form_errors.push(format!(
                        "Too many test emails for this profile: try again in {} s.",
                        wait.as_secs().max(1)
                    ));
                    return ctx.page(StatusCode::TOO_MANY_REQUESTS, views::form(&ctx, &values, &state));
                }
                let from = Some(submitted.get("test_from")).filter(|f| !f.is_empty());
                state.report = Some(crate::diagnose::send_test(&settings, to, from).await);
                state.report_kind = "send";
            } else {
                state.report = Some(crate::diagnose::verify(&settings).await);
                state.report_kind = "test";
            }
            ctx.page(StatusCode::OK, views::form(&ctx, &values, &state))
        }
        _ => {
            let Some(settings) = settings else {
                return ctx.page(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    views::form(&ctx, &values, &state),
                );
            };
            if form_version != Some(profiles.version()) {
                return conflict(&ctx, &profiles, &mut values, state, &settings);
            }
            if submitted.checked("test_on_save") {
                let report = crate::diagnose::verify(&settings).await;
                if !report.is_ok() {
                    state.form_errors.push(
                        "Not saved: this profile is tested before it is saved, and the connection test failed (see the report below)."
                            .to_owned(),
                    );
                    state.password_note = submitted.password.is_some();
                    state.report = Some(report);
                    state.report_kind = "test";
                    return ctx.page(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        views::form(&ctx, &values, &state),
                    );
                }
            }
            if let Err((field, message)) = apply(
                &mut profiles,
                stored_name.as_deref(),
                &name,
                settings.clone(),
                submitted.checked("enabled"),
                submitted.checked("test_on_save"),
            ) {
                match field {
                    Some(f) => {
                        state.errors.insert(f.to_owned(), message);
                    }
                    None => state.form_errors.push(message),
                }
                return ctx.page(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    views::form(&ctx, &values, &state),
                );
            }
            match store.save_and_release(&mut profiles).await {
                Ok(released) => {
                    ctx.see_other(&format!("/?saved={}&released={released}", encode_segment(&name)))
                }
                Err(e) if e.is_conflict() => match store.load() {
                    Ok(current) => conflict(&ctx, &current, &mut values, state, &settings),
                    Err(e) => super::error_page(&ctx, &e),
                },
                Err(e) => {
                    state.form_errors.push(format!("Not saved: {e}"));
                    ctx.page(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        views::form(&ctx, &values, &state),
                    )
                }
            }
        }
    }
}

/// Applies the form to `profiles`: `Err((input, message))` when the name is
/// taken or gone.
fn apply(
    profiles: &mut Profiles,
    stored_name: Option<&str>,
    name: &str,
    settings: SmtpSettings,
    enabled: bool,
    test_on_save: bool,
) -> Result<(), (Option<&'static str>, String)> {
    let taken = |n: &str| (Some("name"), format!("there is already a profile named “{n}”"));
    match stored_name {
        None => {
            if profiles.get(name).is_some() {
                return Err(taken(name));
            }
            profiles
                .add(name, settings, enabled)
                .map_err(|e| (Some("name"), e.to_string()))?;
        }
        Some(old) => {
            if old != name {
                if profiles.get(name).is_some() {
                    return Err(taken(name));
                }
                profiles
                    .rename(old, name)
                    .map_err(|e| (Some("name"), e.to_string()))?;
            }
            profiles.edit(name, settings).map_err(|e| (None, e.to_string()))?;
            profiles
                .set_enabled(name, enabled)
                .map_err(|e| (None, e.to_string()))?;
        }
    }
    profiles
        .set_test_on_save(name, test_on_save)
        .map_err(|e| (None, e.to_string()))
}

/// The form again after someone else saved: nothing written, what differs
/// shown, and the current version in the form so that saving again
/// replaces their values with these.
fn conflict(
    ctx: &Ctx,
    current: &Profiles,
    values: &mut Values,
    mut state: FormState,
    mine: &SmtpSettings,
) -> Response {
    let theirs = state
        .stored_name
        .as_deref()
        .or(Some(values.name.as_str()))
        .and_then(|n| current.get(n));
    let mut differences = Vec::new();
    match theirs {
        Some(p) => {
            let a = p.settings().to_data();
            let b = mine.to_data();
            let rows: [(&'static str, String, String); 8] = [
                ("Host", a.host, b.host),
                ("Port", a.port.to_string(), b.port.to_string()),
                ("TLS", a.tls, b.tls),
                ("Sender", a.sender, b.sender),
                (
                    "Sender name",
                    a.sender_name.unwrap_or_default(),
                    b.sender_name.unwrap_or_default(),
                ),
                (
                    "User name",
                    a.username.unwrap_or_default(),
                    b.username.unwrap_or_default(),
                ),
                (
                    "HELO name",
                    a.helo_name.unwrap_or_default(),
                    b.helo_name.unwrap_or_default(),
                ),
                ("Enabled", p.enabled().to_string(), values.enabled.to_string()),
            ];
            differences.extend(rows.into_iter().filter(|(_, x, y)| x != y));
            if p.settings().max_deliveries_per_connection() != mine.max_deliveries_per_connection() {
                differences.push((
                    "Deliveries per connection",
                    p.settings().max_deliveries_per_connection().to_string(),
                    mine.max_deliveries_per_connection().to_string(),
                ));
            }
            if p.settings().redirect() != mine.redirect() {
                differences.push(("Redirect", "changed".to_owned(), "as below".to_owned()));
            }
        }
        None if state.stored_name.is_some() => {
            differences.push(("Profile", "deleted".to_owned(), "as below".to_owned()));
        }
        None => {}
    }
    state.form_errors.push(format!(
        "Not saved: someone else saved the profiles while you were editing (you opened version {}, it is now version {}). Their values differ from yours as shown; press Save again to replace them with yours.",
        state.version,
        current.version()
    ));
    state.version = current.version();
    state.conflict = Some(differences);
    ctx.page(StatusCode::CONFLICT, views::form(ctx, values, &state))
}
