//! DKIM verification with Stalwart's mail-auth, an implementation
//! independent of relaymail's signer, for the test binaries that include
//! this file with `#[path]` (tests/dkim, tests/interop). The public key is
//! given by the test: mail-auth finds it in a cache filled here and never
//! asks DNS (its resolver has no name server to ask).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt};

/// The TXT records of the test: name (lower case, with the final dot) to
/// the parsed key record.
struct Records(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for Records {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().expect("records").get(name).cloned()
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().expect("records").remove(name)
    }

    fn insert(&self, key: Box<str>, value: Txt, _valid_until: std::time::Instant) {
        self.0.lock().expect("records").insert(key, value);
    }
}

/// mail-auth's verdict on each DKIM-Signature of `message`, with the key
/// record `record` published at `dns_name` (and no other). `Pass` is
/// `"pass"`; anything else is described.
pub(crate) async fn mail_auth_verdicts(message: &[u8], dns_name: &str, record: &str) -> Vec<String> {
    let key = DomainKey::parse(record.as_bytes()).expect("mail-auth reads the key record");
    let mut name = dns_name.to_ascii_lowercase();
    if !name.ends_with('.') {
        name.push('.');
    }
    let records = Records(Mutex::new(HashMap::from([(
        name.into_boxed_str(),
        Txt::from(key),
    )])));
    // No name server: a name missing from `records` is an error, never a
    // DNS query.
    let authenticator = MessageAuthenticator::new(
        ResolverConfig::from_name_servers(Vec::new()),
        ResolverOpts::default(),
    )
    .expect("a resolver without name servers");
    let Some(parsed) = AuthenticatedMessage::parse(message) else {
        return vec!["mail-auth cannot parse the message".to_owned()];
    };
    authenticator
        .verify_dkim(Parameters::new(&parsed).with_txt_cache(&records))
        .await
        .iter()
        .map(|out| match out.result() {
            DkimResult::Pass => "pass".to_owned(),
            other => format!("{other:?}"),
        })
        .collect()
}

/// Whether mail-auth finds exactly one DKIM-Signature and it passes; the
/// verdicts otherwise.
pub(crate) async fn mail_auth_passes(
    message: &[u8],
    dns_name: &str,
    record: &str,
) -> Result<(), Vec<String>> {
    let verdicts = mail_auth_verdicts(message, dns_name, record).await;
    if verdicts == ["pass"] {
        Ok(())
    } else {
        Err(verdicts)
    }
}
