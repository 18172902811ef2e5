//! CSRF tokens: a random value in a `SameSite=Strict`, `HttpOnly` cookie,
//! and in every form the HMAC of that value under a key only this process
//! knows. A POST is accepted only when its form's token is the MAC of the
//! cookie it came with: another site can neither read the cookie nor make a
//! token for one it planted (a sibling subdomain can set cookies, not
//! compute MACs).

use ring::hmac;

/// The cookie's name.
pub(super) const COOKIE: &str = "relaymail_csrf";

/// The key tokens are made with: random per [`AdminState`](super::AdminState).
pub(super) struct CsrfKey(hmac::Key);

impl CsrfKey {
    /// A key from the operating system's CSPRNG (`None` if it failed).
    pub(super) fn random() -> Option<CsrfKey> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).ok()?;
        Some(CsrfKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
    }

    /// The form token for `cookie`.
    pub(super) fn token(&self, cookie: &str) -> String {
        hex(hmac::sign(&self.0, cookie.as_bytes()).as_ref())
    }

    /// Whether `token` is the form token for `cookie` (constant time).
    pub(super) fn verify(&self, cookie: &str, token: &str) -> bool {
        let Some(tag) = unhex(token) else {
            return false;
        };
        !cookie.is_empty() && hmac::verify(&self.0, cookie.as_bytes(), &tag).is_ok()
    }
}

impl std::fmt::Debug for CsrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfKey(..)")
    }
}

/// A new cookie value: 32 random bytes, hex (`None` if the operating
/// system's CSPRNG failed).
pub(super) fn new_cookie() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).ok()?;
    Some(hex(&bytes))
}

/// The CSRF cookie's value in a `Cookie` header, if well-formed.
pub(super) fn cookie_value(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 128 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_only_its_own_cookie() {
        let key = CsrfKey::random().expect("randomness");
        let cookie = new_cookie().expect("randomness");
        let token = key.token(&cookie);
        assert!(key.verify(&cookie, &token));
        assert!(
            !key.verify(&new_cookie().expect("randomness"), &token),
            "another cookie"
        );
        assert!(
            !key.verify(&cookie, &CsrfKey::random().expect("randomness").token(&cookie)),
            "another key"
        );
        assert!(!key.verify(&cookie, ""), "no token");
        assert!(!key.verify(&cookie, "zz"), "not hex");
        assert!(!key.verify("", &key.token("")), "no cookie");
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = axum::http::HeaderMap::new();
        let value = new_cookie().expect("randomness");
        headers.insert(
            axum::http::header::COOKIE,
            format!("theme=dark; {COOKIE}={value}; other=1")
                .parse()
                .expect("header"),
        );
        assert_eq!(cookie_value(&headers), Some(value));
        headers.insert(
            axum::http::header::COOKIE,
            format!("{COOKIE}=short").parse().expect("header"),
        );
        assert_eq!(cookie_value(&headers), None);
    }
}
