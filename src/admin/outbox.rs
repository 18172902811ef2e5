//! The outbox page: waiting and failed drafts, one draft's envelope and
//! headers, retry and delete.

use std::sync::Arc;

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;

use super::{views, Ctx, Flash};
use crate::outbox::{Area, DraftId, Outbox};

/// Drafts per page.
const PAGE: usize = 50;
/// The most header bytes shown for a draft.
const MAX_HEADERS: usize = 64 * 1024;
/// The most body bytes shown for a draft, when asked.
const MAX_BODY: usize = 256 * 1024;

fn outbox_of(ctx: &Ctx) -> Option<Arc<dyn Outbox>> {
    ctx.inner.mailer.as_ref().and_then(crate::Mailer::outbox)
}

fn area_of(text: Option<&str>) -> Option<Area> {
    match text {
        None | Some("drafts") => Some(Area::Drafts),
        Some("failed") => Some(Area::Failed),
        Some(_) => None,
    }
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    area: Option<String>,
    #[serde(default)]
    after: Option<String>,
}

pub(super) async fn page(ctx: Ctx, Query(q): Query<ListQuery>, Query(flash): Query<Flash>) -> Response {
    let Some(area) = area_of(q.area.as_deref()) else {
        return super::not_found(ctx).await;
    };
    let Some(outbox) = outbox_of(&ctx) else {
        return ctx.page(
            StatusCode::OK,
            views::outbox(&ctx, area, None, flash.text(), None),
        );
    };
    let after = q.after.as_deref().and_then(DraftId::parse);
    match outbox.list(area, after.as_ref(), PAGE).await {
        Ok(page) => ctx.page(
            StatusCode::OK,
            views::outbox(&ctx, area, Some(&page), flash.text(), None),
        ),
        Err(e) => ctx.page(
            StatusCode::INTERNAL_SERVER_ERROR,
            views::outbox(
                &ctx,
                area,
                None,
                None,
                Some(format!("The outbox cannot be read: {e}")),
            ),
        ),
    }
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct InspectQuery {
    /// Show the body too (`?body=1`).
    #[serde(default)]
    body: Option<u8>,
}

pub(super) async fn inspect(
    ctx: Ctx,
    Path((area, id)): Path<(String, String)>,
    Query(q): Query<InspectQuery>,
) -> Response {
    let (Some(area), Some(id), Some(outbox)) = (area_of(Some(&area)), DraftId::parse(&id), outbox_of(&ctx))
    else {
        return super::not_found(ctx).await;
    };
    let info = match outbox.inspect(area, &id).await {
        Ok(info) => info,
        Err(_) => {
            return ctx.page(
                StatusCode::NOT_FOUND,
                views::message(
                    &ctx,
                    "No such draft",
                    "It was delivered, retried or deleted meanwhile.",
                ),
            )
        }
    };
    let message = outbox.read_message(area, &id).await.ok();
    let headers = message.as_deref().map(headers_of);
    let body = message.as_deref().filter(|_| q.body == Some(1)).map(body_of);
    ctx.page(
        StatusCode::OK,
        views::draft(&ctx, &info, headers.as_deref(), body.as_deref()),
    )
}

/// A message's header section and body: split at the first empty line
/// (CRLF, or bare LF); without one, it is all header section.
fn split_message(message: &[u8]) -> (&[u8], &[u8]) {
    let at = |separator: &[u8]| {
        message
            .windows(separator.len())
            .position(|w| w == separator)
            .map(|i| (i, i + separator.len()))
    };
    let (end, start) = at(b"\r\n\r\n")
        .or_else(|| at(b"\n\n"))
        .unwrap_or((message.len(), message.len()));
    (&message[..end], &message[start..])
}

/// The header section of a message, as text, cut at [`MAX_HEADERS`] bytes.
fn headers_of(message: &[u8]) -> String {
    let (headers, _) = split_message(message);
    String::from_utf8_lossy(&headers[..headers.len().min(MAX_HEADERS)]).replace("\r\n", "\n")
}

/// The body of a message, as text, cut at [`MAX_BODY`] bytes.
fn body_of(message: &[u8]) -> String {
    let (_, body) = split_message(message);
    let mut text = String::from_utf8_lossy(&body[..body.len().min(MAX_BODY)]).replace("\r\n", "\n");
    if body.len() > MAX_BODY {
        text.push_str("\n[… cut: the body is longer]");
    }
    text
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct ActionForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    area: Option<String>,
}

pub(super) async fn retry_all(ctx: Ctx, Form(form): Form<ActionForm>) -> Response {
    if !ctx.verify(form.csrf.as_deref()) {
        return ctx.forbidden();
    }
    let (Some(area), Some(outbox)) = (area_of(form.area.as_deref()), outbox_of(&ctx)) else {
        return super::not_found(ctx).await;
    };
    match outbox.retry_all_now(area).await {
        Ok(n) => {
            wake(&ctx);
            ctx.see_other(&format!("/outbox?area={}&retried={n}", views::area_str(area)))
        }
        Err(e) => super::error_page(&ctx, &e),
    }
}

pub(super) async fn action(
    ctx: Ctx,
    Path((area, id, action)): Path<(String, String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    if !ctx.verify(form.csrf.as_deref()) {
        return ctx.forbidden();
    }
    let (Some(area), Some(id), Some(outbox)) = (area_of(Some(&area)), DraftId::parse(&id), outbox_of(&ctx))
    else {
        return super::not_found(ctx).await;
    };
    let done = match action.as_str() {
        "retry" => outbox.retry_now(area, &id).await.map(|()| "retried=1"),
        "delete" => outbox.delete(area, &id).await.map(|()| "removed=1"),
        _ => return super::not_found(ctx).await,
    };
    match done {
        Ok(flash) => {
            wake(&ctx);
            ctx.see_other(&format!("/outbox?area={}&{flash}", views::area_str(area)))
        }
        Err(_) if outbox.inspect(area, &id).await.is_err() => ctx.page(
            StatusCode::NOT_FOUND,
            views::message(
                &ctx,
                "No such draft",
                "It was delivered, retried or deleted meanwhile.",
            ),
        ),
        Err(e) => super::error_page(&ctx, &e),
    }
}

/// After a retry: the administrator says the relay may be back, so a relay
/// marked down is tried at once, and the deliverer looks at the drafts now.
fn wake(ctx: &Ctx) {
    if let Some(mailer) = &ctx.inner.mailer {
        mailer.retry_relay_now();
        mailer.wake_outbox();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_header_section_is_shown() {
        assert_eq!(
            headers_of(b"Subject: a\r\nTo: b\r\n\r\nsecret body"),
            "Subject: a\nTo: b"
        );
        assert_eq!(headers_of(b"Subject: a\n\nbody"), "Subject: a");
        assert_eq!(headers_of(b"Subject: only headers"), "Subject: only headers");
        assert_eq!(
            body_of(b"Subject: a\r\n\r\nline 1\r\nline 2\r\n"),
            "line 1\nline 2\n"
        );
        assert_eq!(body_of(b"Subject: only headers"), "");
        let long = [b"S: a\r\n\r\n".as_slice(), &vec![b'x'; MAX_BODY + 1]].concat();
        assert!(body_of(&long).ends_with("[… cut: the body is longer]"));
    }
}
