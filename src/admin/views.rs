//! The pages, as maud templates: every interpolation is HTML-escaped.

use std::time::{SystemTime, UNIX_EPOCH};

use maud::{html, Markup, DOCTYPE};

use super::form::{FormState, Values};
use super::{encode_segment, Ctx};
use crate::diagnose::Report;
use crate::outbox::{Area, DraftInfo, Page};
use crate::profiles::Profiles;

/// The stylesheet (served at `style.css`: the CSP allows no inline styles).
pub(super) const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}\
header{background:#20324a;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.5rem;align-items:baseline}\
header a{color:#fff}header h1{font-size:1.1rem;margin:0}\
main{padding:1rem 1.2rem;max-width:64rem}\
table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border-bottom:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}\
tr.active td{background:#eef6ee}tr.failed td{background:#fbeaea}tr.ok td:first-child{color:#1d6b1d}\
.badge{font-size:.8rem;background:#1d6b1d;color:#fff;border-radius:.6rem;padding:0 .5rem}\
form.inline{display:inline}button{margin:.1rem .2rem .1rem 0;padding:.25rem .7rem}\
fieldset{border:1px solid #bbb;margin:0 0 1rem;padding:.5rem 1rem}legend{font-weight:600}\
.field{margin:.45rem 0}.field label{display:block;font-weight:500}\
.field input[type=text],.field input[type=email],.field input[type=password],.field input[type=number],.field select{width:22rem;max-width:100%;padding:.2rem}\
.check label{display:inline;font-weight:normal}\
textarea{width:36rem;max-width:100%;height:6rem;font-family:monospace}\
.field-error{color:#a40000;margin:.15rem 0;font-weight:600}[aria-invalid=true]{border:2px solid #a40000}\
.hint{color:#555;font-size:.9rem;margin:.1rem 0}\
#flash{background:#eef6ee;border:1px solid #9c9;padding:.5rem}\
#form-error{background:#fbeaea;border:1px solid #d99;padding:.5rem;margin-bottom:1rem}\
#report{border:1px solid #888;padding:.5rem 1rem;margin:1rem 0;background:#fff}\
#verdict{font-weight:700}code,pre{font-size:.9rem}pre{white-space:pre-wrap}\
";

fn layout(ctx: &Ctx, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (title) " — SMTP settings" }
                link rel="stylesheet" href=(ctx.url("/style.css"));
            }
            body {
                header {
                    h1 { "SMTP settings" }
                    nav aria-label="SMTP settings" {
                        a href=(ctx.url("/")) { "Profiles" } " · "
                        a id="outbox-link" href=(ctx.url("/outbox")) { "Outbox" }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn csrf(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.token()); }
}

/// A one-message page (not found, errors).
pub(super) fn message(ctx: &Ctx, title: &str, text: &str) -> Markup {
    layout(
        ctx,
        title,
        html! {
            h2 { (title) }
            p role="alert" { (text) }
            p { a href=(ctx.url("/")) { "Back to the profiles" } }
        },
    )
}

/// The refusal of a POST without a valid CSRF token.
pub(super) fn forbidden(ctx: &Ctx) -> Markup {
    message(
        ctx,
        "Refused",
        "This form was not sent from this page (its security token is missing or out of date), so nothing was changed. Open the page again and repeat.",
    )
}

/// The profile list.
pub(super) fn list(ctx: &Ctx, profiles: &Profiles, flash: Option<String>) -> Markup {
    let active = profiles.active().ok().map(|p| p.name().to_owned());
    let version = profiles.version();
    let last = profiles.len().saturating_sub(1);
    let action = |name: &str, what: &str, label: &str, text: Markup| {
        html! {
            form.inline method="post" action=(ctx.url(&format!("/profiles/{}/{what}", encode_segment(name)))) {
                (csrf(ctx))
                input type="hidden" name="version" value=(version);
                button type="submit" aria-label=(format!("{label} {name}")) { (text) }
            }
        }
    };
    layout(
        ctx,
        "Profiles",
        html! {
            h2 { "Profiles" }
            @if let Some(text) = flash {
                p id="flash" role="status" { (text) }
            }
            p { "Mail is sent with the first enabled profile." }
            @if profiles.is_empty() {
                p id="no-profiles" { "There are no profiles yet." }
            } @else {
                table id="profiles" {
                    caption.hint { "Profiles in the order they are tried" }
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Host" } th scope="col" { "TLS" } th scope="col" { "Enabled" } th scope="col" { "Actions" } } }
                    tbody {
                        @for (i, p) in profiles.iter().enumerate() {
                            @let in_use = active.as_deref() == Some(p.name());
                            tr data-profile=(p.name()) class=[in_use.then_some("active")] {
                                td {
                                    a.edit href=(ctx.url(&format!("/profiles/{}", encode_segment(p.name())))) { (p.name()) }
                                    @if in_use { " " span.badge { "in use" } }
                                }
                                td { (crate::settings::host_port(p.settings().host(), p.settings().port())) }
                                td { (tls_label(p.settings().tls().as_str())) }
                                td { @if p.enabled() { "yes" } @else { "no" } }
                                td {
                                    @if p.enabled() {
                                        (action(p.name(), "disable", "Disable", html! { "Disable" }))
                                    } @else {
                                        (action(p.name(), "enable", "Enable", html! { "Enable" }))
                                    }
                                    @if i > 0 { (action(p.name(), "up", "Move up", html! { "Up" })) }
                                    @if i < last { (action(p.name(), "down", "Move down", html! { "Down" })) }
                                    (action(p.name(), "delete", "Delete", html! { "Delete" }))
                                }
                            }
                        }
                    }
                }
            }
            p { a id="new-profile" href=(ctx.url("/profiles/new")) { "New profile" } }
        },
    )
}

fn tls_label(mode: &str) -> &'static str {
    match mode {
        "none" => "none",
        "starttls-opportunistic" => "STARTTLS if offered",
        "starttls" => "STARTTLS required",
        "implicit" => "implicit TLS",
        _ => "unknown",
    }
}

/// One labelled input with its error.
fn field(state: &FormState, id: &str, label: &str, kind: &str, value: &str, hint: Option<&str>) -> Markup {
    let error = state.errors.get(id);
    let described = describedby(id, error.is_some(), hint.is_some());
    html! {
        div.field {
            label for=(id) { (label) }
            @if let Some(h) = hint { p.hint id=(format!("{id}-hint")) { (h) } }
            input type=(kind) id=(id) name=(id) value=(value)
                aria-invalid=[error.map(|_| "true")] aria-describedby=[described];
            @if let Some(e) = error { p.field-error id=(format!("{id}-error")) { (e) } }
        }
    }
}

fn describedby(id: &str, error: bool, hint: bool) -> Option<String> {
    let mut ids = Vec::new();
    if error {
        ids.push(format!("{id}-error"));
    }
    if hint {
        ids.push(format!("{id}-hint"));
    }
    (!ids.is_empty()).then(|| ids.join(" "))
}

fn check(state: &FormState, id: &str, label: &str, on: bool) -> Markup {
    let error = state.errors.get(id);
    html! {
        div.field.check {
            input type="checkbox" id=(id) name=(id) value="on" checked[on]
                aria-invalid=[error.map(|_| "true")] aria-describedby=[error.map(|_| format!("{id}-error"))];
            " " label for=(id) { (label) }
            @if let Some(e) = error { p.field-error id=(format!("{id}-error")) { (e) } }
        }
    }
}

fn select(state: &FormState, id: &str, label: &str, value: &str, options: &[(&str, &str)]) -> Markup {
    let error = state.errors.get(id);
    html! {
        div.field {
            label for=(id) { (label) }
            select id=(id) name=(id) aria-invalid=[error.map(|_| "true")] aria-describedby=[error.map(|_| format!("{id}-error"))] {
                @for (v, text) in options {
                    option value=(v) selected[*v == value] { (text) }
                }
            }
            @if let Some(e) = error { p.field-error id=(format!("{id}-error")) { (e) } }
        }
    }
}

/// The edit form (with its errors, a conflict, or a test's report).
pub(super) fn form(ctx: &Ctx, v: &Values, state: &FormState) -> Markup {
    let action = match &state.stored_name {
        Some(name) => ctx.url(&format!("/profiles/{}", encode_segment(name))),
        None => ctx.url("/profiles/new"),
    };
    let title = match &state.stored_name {
        Some(name) => format!("Profile “{name}”"),
        None => "New profile".to_owned(),
    };
    let password_hint = if v.has_password {
        "Leave empty to keep the stored password (unchanged). It is never shown."
    } else {
        "No password is stored."
    };
    html! {
        (layout(ctx, &title, html! {
            h2 { (title) }
            @if !state.form_errors.is_empty() || !state.errors.is_empty() {
                div id="form-error" role="alert" {
                    @if state.form_errors.is_empty() {
                        p { "Please correct the fields marked below." }
                    }
                    @for e in &state.form_errors { p { (e) } }
                    @if let Some(diff) = &state.conflict {
                        @if !diff.is_empty() {
                            table id="conflict" {
                                caption { "What differs" }
                                thead { tr { th scope="col" { "Field" } th scope="col" { "Saved by the other person" } th scope="col" { "Yours (below)" } } }
                                tbody { @for (label, theirs, mine) in diff { tr { th scope="row" { (label) } td { (theirs) } td { (mine) } } } }
                            }
                        }
                    }
                }
            }
            @if let Some(report) = &state.report { (report_view(report, state.report_kind)) }
            form id="profile-form" method="post" enctype="multipart/form-data" action=(action) {
                (csrf(ctx))
                input type="hidden" name="version" value=(state.version);
                fieldset {
                    legend { "Profile" }
                    (field(state, "name", "Name", "text", &v.name, None))
                    (check(state, "enabled", "Enabled (the first enabled profile is used)", v.enabled))
                    (check(state, "test_on_save", "Test the connection before saving", v.test_on_save))
                }
                fieldset {
                    legend { "Server" }
                    (field(state, "host", "Host", "text", &v.host, None))
                    (field(state, "port", "Port", "text", &v.port, Some("Empty: 25 without TLS, 587 for STARTTLS, 465 for implicit TLS.")))
                    (select(state, "tls", "TLS", &v.tls, &[
                        ("none", "None (clear text)"),
                        ("starttls-opportunistic", "STARTTLS if the server offers it"),
                        ("starttls", "STARTTLS required"),
                        ("implicit", "Implicit TLS (SMTPS)"),
                    ]))
                    (field(state, "helo_name", "HELO name", "text", &v.helo_name, Some("Empty: this machine's name.")))
                    (field(state, "timeout", "Timeout (seconds)", "text", &v.timeout, None))
                    div.field {
                        label for="ca_pem" { "Trusted CA certificates (PEM)" }
                        p.hint id="ca_pem-hint" { "For a relay with a private certificate authority; paste them or choose a file. Empty: the public roots only." }
                        textarea id="ca_pem" name="ca_pem"
                            aria-invalid=[state.errors.get("ca_pem").map(|_| "true")]
                            aria-describedby=(describedby("ca_pem", state.errors.contains_key("ca_pem"), true).unwrap_or_default()) { (v.ca_pem) }
                        @if let Some(e) = state.errors.get("ca_pem") { p.field-error id="ca_pem-error" { (e) } }
                        label for="ca_file" { "Certificate file" }
                        input type="file" id="ca_file" name="ca_file" accept=".pem,.crt,.cer,text/plain";
                    }
                }
                fieldset {
                    legend { "Sender" }
                    (field(state, "sender", "Sender address", "text", &v.sender, None))
                    (field(state, "sender_name", "Sender name", "text", &v.sender_name, None))
                }
                fieldset {
                    legend { "Sign-in" }
                    (check(state, "auth", "Sign in to the server", v.auth))
                    (field(state, "username", "User name", "text", &v.username, None))
                    div.field {
                        label for="password" { "Password" }
                        p.hint id="password-hint" { (password_hint) }
                        input type="password" id="password" name="password" value="" autocomplete="new-password"
                            placeholder=(if v.has_password { "unchanged" } else { "" })
                            aria-invalid=[state.errors.get("password").map(|_| "true")]
                            aria-describedby=(describedby("password", state.errors.contains_key("password"), true).unwrap_or_default());
                        @if let Some(e) = state.errors.get("password") { p.field-error id="password-error" { (e) } }
                        @if state.password_note {
                            p.hint id="password-note" { "The password you typed was used for this test but is not kept in the page: type it again before saving." }
                        }
                    }
                    @if v.has_password { (check(state, "password_clear", "Clear the stored password (no sign-in)", false)) }
                    (check(state, "allow_plaintext_auth", "Allow sign-in without TLS (unsafe: the password crosses the network readable)", v.allow_plaintext_auth))
                }
                fieldset {
                    legend { "Delivery" }
                    (field(state, "max_deliveries", "Messages per connection", "text", &v.max_deliveries, None))
                    (select(state, "address_policy", "Address policy", &v.address_policy, &[
                        ("strict", "Strict (RFC 5321)"),
                        ("lenient", "Lenient (accept what address books hold)"),
                    ]))
                    (field(state, "attachment_limit", "Attachment limit (bytes)", "text", &v.attachment_limit, Some("Empty: no limit.")))
                    (check(state, "attachment_links", "Send larger attachments as links instead of refusing the email", v.attachment_links))
                }
                fieldset {
                    legend { "Redirect (testing and staging)" }
                    (check(state, "redirect_enabled", "Send every email only to the enabled report addresses", v.redirect_enabled))
                    @for (i, (address, on)) in v.reports.iter().enumerate() {
                        @let id = format!("report_address_{i}");
                        @let error = state.errors.get(&id);
                        div.field {
                            label for=(id) { "Report address " (i + 1) }
                            input type="text" id=(id) name=(id) value=(address)
                                aria-invalid=[error.map(|_| "true")] aria-describedby=[error.map(|_| format!("{id}-error"))];
                            " "
                            input type="checkbox" id=(format!("report_enabled_{i}")) name=(format!("report_enabled_{i}")) value="on" checked[*on];
                            " " label for=(format!("report_enabled_{i}")) { "enabled" }
                            @if let Some(e) = error { p.field-error id=(format!("{id}-error")) { (e) } }
                        }
                    }
                }
                fieldset {
                    legend { "Test" }
                    p.hint { "The tests use the values in this form, saved or not." }
                    (field(state, "test_from", "Test email from", "text", &v.test_from, Some("Empty: the sender address.")))
                    (field(state, "test_to", "Test email to", "text", &v.test_to, None))
                    button id="test-connection" type="submit" name="action" value="test" { "Test connection" }
                    button id="send-test" type="submit" name="action" value="send" { "Send test email" }
                }
                button id="save" type="submit" name="action" value="save" { "Save" }
                " "
                a href=(ctx.url("/")) { "Cancel" }
            }
        }))
    }
}

/// A diagnosis report: every stage, the TLS details, the verdict and hint.
fn report_view(report: &Report, kind: &str) -> Markup {
    let verdict = match report.error() {
        Some(e) => {
            // The stage is said first and the hint below: not twice.
            let stage = e.stage().map(|s| s.as_str()).unwrap_or("start");
            let text = e.to_string();
            let text = text.strip_prefix(&format!("{stage}: ")).unwrap_or(&text);
            let text = match e.hint() {
                Some(h) => text.strip_suffix(&format!("; hint: {h}")).unwrap_or(text),
                None => text,
            };
            format!("Failed at {stage}: {text}")
        }
        None if kind == "send" => match report.delivery() {
            Some(d) => format!("Test email delivered: the server answered {}", d.reply()),
            None => "Test email delivered".to_owned(),
        },
        None => "Connected: the server accepted the connection and the sign-in".to_owned(),
    };
    html! {
        section id="report" aria-labelledby="report-title" {
            h3 id="report-title" { @if kind == "send" { "Test email" } @else { "Connection test" } }
            p id="verdict" role="status" class=(if report.is_ok() { "ok" } else { "failed" }) { (verdict) }
            @if let Some(hint) = report.error().and_then(|e| e.hint()) {
                p id="hint" { strong { "What to do: " } (hint) }
            }
            table.stages {
                caption { "Stages" }
                thead { tr { th scope="col" { "Stage" } th scope="col" { "Time" } th scope="col" { "Result" } th scope="col" { "Server replies" } } }
                tbody {
                    @for s in report.stages() {
                        tr data-stage=(s.stage.as_str()) class=(if s.ok { "ok" } else { "failed" }) {
                            td { (s.stage.as_str()) }
                            td { (format!("{:.1} ms", s.duration.as_secs_f64() * 1000.0)) }
                            td { @if s.ok { "ok" } @else { "failed" } }
                            td { @for r in &s.replies { code { (r.to_string()) } br; } }
                        }
                    }
                }
            }
            @if let Some(tls) = report.tls() {
                p id="tls" {
                    "TLS: " (tls.version) " " (tls.cipher_suite)
                    @if tls.via_starttls { " via STARTTLS" }
                    "; certificate for "
                    @if tls.certificate_names.is_empty() { "(no names)" } @else { (tls.certificate_names.join(", ")) }
                }
            }
            @if let Some(m) = report.auth_mechanism() { p { "Signed in with " (m.name()) } }
            @if let Some(relay) = report.relay() { p { "Relay: " (relay.to_string()) } }
            @if !report.extensions().is_empty() {
                p { "Extensions: " (report.extensions().join(", ")) }
            }
        }
    }
}

/// The outbox page.
pub(super) fn outbox(
    ctx: &Ctx,
    area: Area,
    page: Option<&Page>,
    flash: Option<String>,
    error: Option<String>,
) -> Markup {
    let area_name = area_str(area);
    layout(
        ctx,
        "Outbox",
        html! {
            h2 { "Outbox" }
            @if let Some(text) = flash { p id="flash" role="status" { (text) } }
            @if let Some(text) = error { div id="form-error" role="alert" { p { (text) } } }
            nav aria-label="Outbox areas" {
                a href=(ctx.url("/outbox?area=drafts")) aria-current=[(area == Area::Drafts).then_some("page")] { "Waiting" }
                " · "
                a href=(ctx.url("/outbox?area=failed")) aria-current=[(area == Area::Failed).then_some("page")] { "Failed" }
            }
            @match page {
                None => { p id="no-outbox" { "This application has no outbox: messages that cannot be sent at once are not kept." } }
                Some(page) => {
                    @if page.drafts.is_empty() {
                        p id="outbox-empty" { @if area == Area::Drafts { "No message is waiting." } @else { "No message has failed." } }
                    } @else {
                        form method="post" action=(ctx.url("/outbox/retry-all")) {
                            (csrf(ctx))
                            input type="hidden" name="area" value=(area_name);
                            button id="retry-all" type="submit" { "Retry all now" }
                        }
                        table id="drafts" {
                            caption.hint { @if area == Area::Drafts { "Waiting messages, oldest first" } @else { "Failed messages, oldest first" } }
                            thead { tr {
                                th scope="col" { "Created" } th scope="col" { "From" } th scope="col" { "To" }
                                th scope="col" { "Size" } th scope="col" { "Attempts" } th scope="col" { "Next attempt" }
                                th scope="col" { "Last error" } th scope="col" { "Actions" }
                            } }
                            tbody {
                                @for d in &page.drafts { (draft_row(ctx, d)) }
                            }
                        }
                        @if let Some(next) = &page.next {
                            p { a id="next-page" href=(ctx.url(&format!("/outbox?area={area_name}&after={}", encode_segment(next.as_str())))) { "Next page" } }
                        }
                    }
                }
            }
        },
    )
}

/// A draft's page, under the mount point (its actions are below it).
fn draft_path(d: &DraftInfo) -> String {
    format!("/outbox/{}/{}", area_str(d.area), encode_segment(d.id.as_str()))
}

/// The envelope sender as shown (`<>`: the null reverse path).
fn sender_of(d: &DraftInfo) -> String {
    d.envelope
        .from()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "<>".to_owned())
}

/// The "Retry now" and "Delete" buttons of a draft.
fn draft_actions(ctx: &Ctx, d: &DraftInfo) -> Markup {
    let base = draft_path(d);
    html! {
        form.inline method="post" action=(ctx.url(&format!("{base}/retry"))) {
            (csrf(ctx)) button type="submit" aria-label=(format!("Retry {}", d.id)) { "Retry now" }
        }
        form.inline method="post" action=(ctx.url(&format!("{base}/delete"))) {
            (csrf(ctx)) button type="submit" aria-label=(format!("Delete {}", d.id)) { "Delete" }
        }
    }
}

fn draft_row(ctx: &Ctx, d: &DraftInfo) -> Markup {
    let recipients: Vec<String> = d
        .envelope
        .recipients()
        .iter()
        .map(|r| r.address.to_string())
        .collect();
    html! {
        tr data-draft=(d.id.as_str()) {
            td { a href=(ctx.url(&draft_path(d))) { (time(d.created)) } }
            td { (sender_of(d)) }
            td { (recipients.join(", ")) }
            td { (size(d.size)) }
            td { (d.attempts) }
            td { @if d.area == Area::Drafts { (time(d.next_attempt)) } @else { "—" } }
            td {
                (d.last_error.as_deref().unwrap_or(""))
                @if d.waiting_on_settings { br; span.hint { "(waits for a settings fix)" } }
            }
            td { (draft_actions(ctx, d)) }
        }
    }
}

/// One draft: its envelope, size, attempts and headers; its body only when
/// asked for.
pub(super) fn draft(ctx: &Ctx, d: &DraftInfo, headers: Option<&str>, body: Option<&str>) -> Markup {
    layout(
        ctx,
        "Draft",
        html! {
            h2 { "Draft " code { (d.id.as_str()) } }
            table id="draft" {
                tbody {
                    tr { th scope="row" { "Area" } td { @if d.area == Area::Drafts { "waiting" } @else { "failed" } } }
                    tr { th scope="row" { "From" } td { (sender_of(d)) } }
                    tr { th scope="row" { "To" } td { @for r in d.envelope.recipients() { (r.address.to_string()) br; } } }
                    tr { th scope="row" { "Size" } td { (size(d.size)) } }
                    tr { th scope="row" { "Created" } td { (time(d.created)) } }
                    tr { th scope="row" { "Attempts" } td { (d.attempts) } }
                    @if d.area == Area::Drafts { tr { th scope="row" { "Next attempt" } td { (time(d.next_attempt)) } } }
                    tr { th scope="row" { "Last error" } td { (d.last_error.as_deref().unwrap_or("—")) } }
                    @if d.possibly_delivered {
                        tr { th scope="row" { "Warning" } td { "An attempt may have reached the relay already: retrying may deliver it twice." } }
                    }
                }
            }
            h3 { "Headers" }
            @match headers {
                Some(h) => pre id="headers" { (h) },
                None => p { "The message could not be read." },
            }
            @match body {
                Some(text) => {
                    h3 { "Body" }
                    pre id="body" { (text) }
                }
                None => p.hint { "The body is not shown. " a href=(ctx.url(&format!("{}?body=1", draft_path(d)))) { "Show the body" } }
            }
            (draft_actions(ctx, d))
            p { a href=(ctx.url(&format!("/outbox?area={}", area_str(d.area)))) { "Back to the outbox" } }
        },
    )
}

pub(super) fn area_str(area: Area) -> &'static str {
    match area {
        Area::Failed => "failed",
        _ => "drafts",
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MB", bytes as f64 / 1_048_576.0),
    }
}

/// A time as `YYYY-MM-DD HH:MM:SS UTC`.
fn time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01.
fn civil(days: i64) -> (i64, u32, u32) {
    // Shift to a calendar starting 0000-03-01 so that leap days fall at
    // the end of each 400/100/4-year cycle.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_gregorian() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(59), (1970, 3, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(20_794), (2026, 12, 7));
        assert_eq!(civil(-1), (1969, 12, 31));
        assert_eq!(
            time(UNIX_EPOCH + std::time::Duration::from_secs(20_794 * 86_400 + 3_723)),
            "2026-12-07 01:02:03 UTC"
        );
    }

    #[test]
    fn sizes_are_readable() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(2048), "2.0 KB");
        assert_eq!(size(3 * 1_048_576), "3.0 MB");
    }
}
