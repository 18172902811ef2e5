//! The directory spool's own tests (the deliverer's are in `mailer`).

use std::fs::{self, File};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::*;
use crate::proto::session::Envelope;

fn spool(name: &str) -> (DirSpool, PathBuf) {
    let dir = std::env::temp_dir().join(format!("relaymail-spool-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    (DirSpool::open(&dir).expect("spool"), dir)
}

fn message(i: usize) -> Message {
    Message::new(
        Envelope::new(
            Some("app@example.com".parse().expect("address")),
            vec![format!("user{i}@example.net").parse().expect("address")],
        )
        .expect("envelope"),
        format!("Subject: {i}\r\n\r\nbody {i}\n\n.\n").into_bytes(),
    )
}

#[test]
fn enqueue_inspect_message_defer_fail_retry_delete() {
    let (s, dir) = spool("cycle");
    let id = s.enqueue(&message(1)).expect("queued");
    let info = s.inspect(Area::Drafts, &id).expect("inspect");
    assert_eq!((info.attempts, info.size), (0, message(1).content().len() as u64));
    assert_eq!(
        s.message(Area::Drafts, &id).expect("message").content(),
        message(1).content()
    );
    let later = SystemTime::now() + Duration::from_secs(60);
    s.defer(&id, Deferral::new("421 4.3.2 try later\r\nX-Injected: no", later))
        .expect("defer");
    let info = s.inspect(Area::Drafts, &id).expect("inspect");
    assert_eq!(info.attempts, 1);
    assert_eq!(
        info.last_error.as_deref(),
        Some("421 4.3.2 try later  X-Injected: no")
    );
    assert_eq!(millis(info.next_attempt), millis(later));
    s.fail(&id, "550 5.1.1 no such user").expect("fail");
    assert!(s.inspect(Area::Drafts, &id).is_err());
    assert_eq!(s.inspect(Area::Failed, &id).expect("failed").attempts, 2);
    s.retry_now(Area::Failed, &id).expect("retry");
    assert!(s.inspect(Area::Drafts, &id).is_ok() && s.inspect(Area::Failed, &id).is_err());
    s.delete(Area::Drafts, &id).expect("delete");
    assert!(s.list(Area::Drafts, None, 10).expect("list").drafts.is_empty());
    let _ = fs::remove_dir_all(dir);
}

fn mtime(s: &DirSpool, id: &DraftId) -> SystemTime {
    fs::metadata(s.path(Area::Drafts, id))
        .and_then(|m| m.modified())
        .expect("mtime")
}

#[test]
fn a_waiting_draft_is_skipped_by_its_file_time_and_a_lost_time_is_repaired() {
    let (s, dir) = spool("mtime");
    let now = SystemTime::now();
    let later = now + Duration::from_secs(3600);
    let waiting = s.enqueue(&message(1)).expect("queued");
    s.defer(&waiting, Deferral::new("421 try later", later))
        .expect("defer");
    assert_eq!(mtime(&s, &waiting), whole_millis(later));
    assert_eq!(s.next_due().expect("next"), Some(whole_millis(later)));

    // The file time decides before anything is read: a waiting draft
    // is not opened (were it read, this damage would be quarantined).
    let path = s.path(Area::Drafts, &waiting);
    let original = fs::read(&path).expect("read");
    fs::write(&path, b"damaged").expect("damage");
    File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(later))
        .expect("time");
    assert!(s.claim_due(now, 10).expect("claim").is_empty());
    assert!(path.exists(), "not read, so not moved aside");

    // A copied or restored spool loses the times: the header decides,
    // and the first poll puts the time back.
    fs::write(&path, &original).expect("restore");
    assert!(mtime(&s, &waiting) <= SystemTime::now());
    assert_eq!(s.next_due().expect("next"), Some(whole_millis(later)));
    assert!(s.claim_due(SystemTime::now(), 10).expect("claim").is_empty());
    assert_eq!(mtime(&s, &waiting), whole_millis(later));

    // Retry now makes it due at once, by its time as well.
    s.retry_now(Area::Drafts, &waiting).expect("retry");
    assert!(mtime(&s, &waiting) <= SystemTime::now());
    let claims = s.claim_due(SystemTime::now(), 10).expect("claim");
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].info().id, waiting);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn listing_is_paged_in_creation_order() {
    let (s, dir) = spool("pages");
    let ids: Vec<DraftId> = (0..25).map(|i| s.enqueue(&message(i)).expect("queued")).collect();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s.list(Area::Drafts, after.as_ref(), 10).expect("page");
        assert!(page.drafts.len() <= 10);
        seen.extend(page.drafts.iter().map(|d| d.id.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn corrupt_and_truncated_files_are_moved_aside() {
    let (s, dir) = spool("corrupt");
    let good = s.enqueue(&message(1)).expect("queued");
    let bad = s.enqueue(&message(2)).expect("queued");
    let path = s.path(Area::Drafts, &bad);
    let raw = fs::read(&path).expect("read");
    fs::write(&path, &raw[..raw.len() - 3]).expect("truncate");
    fs::write(dir.join("drafts").join("junk.txt"), b"not a draft").expect("junk");
    let page = s.list(Area::Drafts, None, 10).expect("list");
    assert_eq!(
        page.drafts.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        vec![good]
    );
    assert_eq!(page.quarantined.len(), 2, "{:?}", page.quarantined);
    assert_eq!(fs::read_dir(dir.join("corrupt")).expect("dir").count(), 2);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn unwritable_spool_refuses_to_queue() {
    let (s, dir) = spool("readonly");
    // Where the temporary file must go there is a plain file: every
    // create fails, as on a read-only or broken spool (and unlike a
    // permission bit, this also holds for root).
    fs::remove_dir_all(dir.join("tmp")).expect("rm");
    fs::write(dir.join("tmp"), b"in the way").expect("file");
    let e = s.enqueue(&message(1)).expect_err("not writable");
    assert!(e.is_io() && e.to_string().contains("cannot create"), "{e}");
    assert!(
        s.list(Area::Drafts, None, 10).expect("list").drafts.is_empty(),
        "nothing queued"
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn paging_lists_every_draft_once_while_drafts_come_and_go() {
    let (s, dir) = spool("paging");
    let mut ids: Vec<DraftId> = (0..25).map(|i| s.enqueue(&message(i)).expect("queued")).collect();
    ids.sort();
    let first = s.list(Area::Drafts, None, 10).expect("page 1");
    let mut seen: Vec<DraftId> = first.drafts.iter().map(|d| d.id.clone()).collect();
    assert_eq!(seen, ids[..10]);
    // While the pages are read: a listed draft and a not yet listed one are
    // delivered, and a draft arrives (with a later id, as new ones have).
    s.delete(Area::Drafts, &ids[0]).expect("delete");
    s.delete(Area::Drafts, &ids[15]).expect("delete");
    let newer = DraftId::parse("fffffffffffff-0000000000000001").expect("id");
    fs::copy(s.path(Area::Drafts, &ids[1]), s.path(Area::Drafts, &newer)).expect("copy");
    let mut after = first.next;
    let mut pages = 1;
    while let Some(a) = after {
        let page = s.list(Area::Drafts, Some(&a), 10).expect("page");
        seen.extend(page.drafts.iter().map(|d| d.id.clone()));
        after = page.next;
        pages += 1;
        assert!(pages < 10, "the cursor ends");
    }
    let mut want: Vec<DraftId> = ids.iter().filter(|id| **id != ids[15]).cloned().collect();
    want.push(newer);
    assert_eq!(
        seen, want,
        "each draft once, in id order; the delivered one skipped"
    );
    // A fresh listing sees the spool as it is now.
    let all = s.list(Area::Drafts, None, 100).expect("all");
    assert_eq!(all.drafts.len(), 24);
    assert!(all.next.is_none());
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn release_makes_the_drafts_waiting_on_the_settings_due_and_skips_one_being_delivered() {
    let (s, dir) = spool("release");
    let later = SystemTime::now() + Duration::from_secs(3600);
    let auth = || Deferral::new("535 5.7.8 authentication failed", later).with_waiting_on_settings(true);
    let (a, b, c) = (
        s.enqueue(&message(1)).expect("a"),
        s.enqueue(&message(2)).expect("b"),
        s.enqueue(&message(3)).expect("c"),
    );
    s.defer(&a, auth()).expect("defer a");
    s.defer(&b, auth()).expect("defer b");
    // c is due later than a and b, so that the claim below can only take
    // one of those two (it takes due drafts in no promised order).
    let c_due = later + Duration::from_secs(3600);
    s.defer(&c, Deferral::new("421 4.3.2 try later", c_due))
        .expect("defer c");
    // A deliverer holds one of the two that wait on the settings.
    let held = s
        .claim_due(later + Duration::from_secs(1), 1)
        .expect("claim")
        .pop()
        .expect("one");
    assert!(
        held.info().id == a || held.info().id == b,
        "a or b is due, c is not"
    );
    let (held_id, free) = if held.info().id == a { (a, b) } else { (b, a) };
    assert_eq!(s.release_waiting_on_settings().expect("release"), 1);
    let info = s.inspect(Area::Drafts, &free).expect("released");
    assert!(!info.waiting_on_settings && info.next_attempt <= SystemTime::now());
    assert!(
        mtime(&s, &free) <= SystemTime::now(),
        "the file time says due now too"
    );
    assert!(
        s.inspect(Area::Drafts, &held_id)
            .expect("held")
            .waiting_on_settings
    );
    assert_eq!(
        millis(s.inspect(Area::Drafts, &c).expect("c").next_attempt),
        millis(c_due)
    );
    drop(held);
    assert_eq!(
        s.release_waiting_on_settings().expect("release"),
        1,
        "the one let go"
    );
    assert_eq!(s.release_waiting_on_settings().expect("release"), 0);
    let _ = fs::remove_dir_all(dir);
}
