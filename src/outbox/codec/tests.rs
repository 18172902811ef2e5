//! The draft format's tests: damaged headers are refused, every draft
//! info reads back as it was written.

use std::time::UNIX_EPOCH;

use super::*;

/// A good draft from app@example.com to user1@example.net, and its id.
fn good_draft() -> (DraftId, String) {
    let id = DraftId::parse("019abc0000000-0123456789abcdef").expect("id");
    let good = encode_draft(
        &DraftInfo {
            id: id.clone(),
            area: Area::Drafts,
            envelope: Envelope::new(
                Some("app@example.com".parse().expect("address")),
                vec!["user1@example.net".parse().expect("address")],
            )
            .expect("envelope"),
            size: 4,
            created: UNIX_EPOCH,
            attempts: 0,
            next_attempt: UNIX_EPOCH,
            last_error: None,
            possibly_delivered: false,
            waiting_on_settings: false,
        },
        b"body",
    );
    assert!(decode_draft(id.clone(), Area::Drafts, &good, true).is_ok());
    (id, String::from_utf8(good).expect("utf-8"))
}

#[test]
fn damaged_headers_are_refused() {
    let (id, text) = good_draft();
    for bad in [
        text.replace("from ", "from x\nfrom "),          // a field twice
        text.replace("size 4", "size 5"),                // truncated
        text.replace("draft 2", "draft 3"),              // a newer format
        text.replace("attempts 0", "attempts 0\nbcc x"), // unknown field
        text.replace("attempts 0", "attempts 0\nrequiretls yes"),
        text.replace("example.net", "example.net notify=SOMETIMES"),
        text.replace("example.net", "example%2.net"),
        text.replace("example.net", "example.net%0D%0AX: y"),
    ] {
        assert!(
            decode_draft(id.clone(), Area::Drafts, bad.as_bytes(), true).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn a_bad_stored_address_is_a_clear_error_not_a_panic() {
    let (id, good) = good_draft();
    let bad_from = good.replace("from app@example.com", "from app@exa_mple.com");
    let e = decode_draft(id.clone(), Area::Drafts, bad_from.as_bytes(), true).expect_err("refused");
    assert!(
        e.starts_with("the sender: invalid address \"app@exa_mple.com\""),
        "{e}"
    );
    let bad_to = good.replace("to user1@example.net", "to user1@@example.net");
    let e = decode_draft(id.clone(), Area::Drafts, bad_to.as_bytes(), true).expect_err("refused");
    assert!(e.starts_with("a recipient: invalid address"), "{e}");
    let no_to = good.replace("to user1@example.net\n", "");
    let e = decode_draft(id, Area::Drafts, no_to.as_bytes(), true).expect_err("refused");
    assert_eq!(e, "the envelope has no recipient");
}

mod roundtrip {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::super::*;
    use crate::proto::command::{BodyType, DsnReturn, MailParams, Notify, RcptParams};
    use proptest::prelude::*;

    fn local_part() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,12}(\\.[a-zA-Z0-9%+_-]{1,8}){0,2}",
            // Quoted: spaces, '%' and escaped quotes are kept.
            "\"[a-z %@.,]{1,10}(\\\\\"[a-z]{0,3})?\"",
            "[a-zé日本]{1,6}",
        ]
    }

    fn domain() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9]{1,10}(\\.[a-z0-9]([a-z0-9-]{0,5}[a-z0-9])?){0,3}\\.[a-z]{2,6}",
            Just("[127.0.0.1]".to_owned()),
            Just("例え.テスト".to_owned()),
        ]
    }

    fn address() -> impl Strategy<Value = Address> {
        (local_part(), domain()).prop_map(|(l, d)| {
            Address::parse(&format!("{l}@{d}"), AddressPolicy::Strict).expect("a valid address")
        })
    }

    /// Printable text (ENVID, ORCPT): no control bytes, as the
    /// protocol requires; spaces, '%', '+', '=' and UTF-8 included.
    fn text(max: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[ -~é<>%+=]{{1,{max}}}")).expect("regex")
    }

    fn notify() -> impl Strategy<Value = Notify> {
        prop_oneof![
            Just(Notify::Never),
            (any::<bool>(), any::<bool>(), any::<bool>())
                .prop_filter("at least one condition", |(s, f, d)| *s || *f || *d)
                .prop_map(|(success, failure, delay)| Notify::On {
                    success,
                    failure,
                    delay
                }),
        ]
    }

    fn recipient() -> impl Strategy<Value = Recipient> {
        (
            address(),
            proptest::option::of(notify()),
            proptest::option::of(text(60)),
        )
            .prop_map(|(address, notify, orcpt)| Recipient {
                address,
                params: RcptParams { notify, orcpt },
            })
    }

    fn mail_params() -> impl Strategy<Value = MailParams> {
        (
            proptest::option::of(any::<u64>()),
            proptest::option::of(prop_oneof![
                Just(BodyType::SevenBit),
                Just(BodyType::EightBitMime),
                Just(BodyType::BinaryMime)
            ]),
            any::<bool>(),
            proptest::option::of(prop_oneof![Just(DsnReturn::Full), Just(DsnReturn::Headers)]),
            // xtext triples non-ASCII bytes on the wire: 12 characters stay under 100 bytes.
            proptest::option::of(text(12)),
            any::<bool>(),
        )
            .prop_map(|(size, body, smtputf8, ret, envid, requiretls)| MailParams {
                size,
                body,
                smtputf8,
                ret,
                envid,
                requiretls,
            })
    }

    /// A time the header stores exactly: whole milliseconds.
    fn time() -> impl Strategy<Value = SystemTime> {
        (0u64..8_000_000_000_000).prop_map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_draft_info_round_trips(
            from in proptest::option::of(address()),
            params in mail_params(),
            recipients in proptest::collection::vec(recipient(), 1..4),
            content in proptest::collection::vec(any::<u8>(), 0..64),
            created in time(),
            next_attempt in time(),
            attempts in any::<u32>(),
            // Any text: line breaks and controls included.
            last_error in proptest::option::of("(.|\r|\n|\u{0}){0,40}"),
            failed in any::<bool>(),
            possibly_delivered in any::<bool>(),
            waiting_on_settings in any::<bool>(),
        ) {
            let envelope = Envelope::with_recipients(from, recipients).expect("recipients").with_params(params);
            prop_assert!(envelope.validate().is_ok(), "{:?}: {:?}", envelope, envelope.validate());
            let info = DraftInfo {
                id: DraftId::parse("019abc0000000-0123456789abcdef").expect("id"),
                area: if failed { Area::Failed } else { Area::Drafts },
                envelope,
                size: content.len() as u64,
                created,
                attempts,
                next_attempt,
                last_error,
                possibly_delivered,
                waiting_on_settings,
            };
            let raw = encode_draft(&info, &content);
            let decoded = decode_draft(info.id.clone(), info.area, &raw, true);
            prop_assert_eq!(decoded, Ok((info.clone(), content)));
            let (header_only, _) = decode_draft(info.id.clone(), info.area, &raw, false).expect("reads");
            prop_assert_eq!(header_only, info);
        }
    }
}

#[test]
fn drafts_written_before_the_settings_flag_read_as_not_waiting_on_the_settings() {
    // A version 2 draft as written before `waiting-on-settings` existed,
    // and a version 1 draft.
    let v2 = "relaymail-draft 2\ncreated 1700000000000\nattempts 2\nnext 1700000060000\nsize 4\n\
              from app@example.com\nto user1@example.net\nerror 535%205.7.8%20authentication%20failed\n\nbody";
    let v1 = "relaymail-draft 1\ncreated 1700000000000\nattempts 1\nnext 1700000060000\nsize 4\n\
              from app@example.com\nto user1@example.net\nerror 421 try later\n\nbody";
    let id = DraftId::parse("019abc0000000-0123456789abcdef").expect("id");
    for old in [v2, v1] {
        let (info, content) = decode_draft(id.clone(), Area::Drafts, old.as_bytes(), true).expect("reads");
        assert!(!info.waiting_on_settings, "{old}");
        assert_eq!(content, b"body");
        assert!(info.attempts >= 1 && info.last_error.is_some());
    }
    // Written with the flag, read with it; the line is a flag without a value.
    let (_, text) = good_draft();
    let flagged = text.replace("\n\n", "\nwaiting-on-settings\n\n");
    let (info, _) = decode_draft(id.clone(), Area::Drafts, flagged.as_bytes(), true).expect("reads");
    assert!(info.waiting_on_settings);
    for bad in [
        text.replace("\n\n", "\nwaiting-on-settings yes\n\n"),
        text.replace("\n\n", "\nwaiting-on-settings\nwaiting-on-settings\n\n"),
    ] {
        assert!(
            decode_draft(id.clone(), Area::Drafts, bad.as_bytes(), true).is_err(),
            "{bad}"
        );
    }
}
