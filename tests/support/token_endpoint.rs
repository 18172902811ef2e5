//! An OAuth2 token endpoint on 127.0.0.1 for tests: the refresh-token
//! grant (RFC 6749 §6) over plain HTTP/1.1 on tokio, hand-written. It
//! issues short-lived access tokens and makes the SMTP test server accept
//! them ([`BearerTokens`]), rotates refresh tokens when asked to, revokes
//! them, counts requests and can hold its answers until the test releases
//! them. Every loop is bounded by the test's lifetime: dropping the
//! endpoint aborts its task.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use relaymail::testing::BearerTokens;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One request the endpoint received (form fields, no secret kept beyond
/// what the test gave it).
#[derive(Clone, Debug)]
pub(crate) struct TokenRequest {
    pub(crate) grant_type: String,
    pub(crate) refresh_token: String,
    pub(crate) client_id: String,
    pub(crate) client_secret: Option<String>,
    pub(crate) scope: Option<String>,
}

struct State {
    valid_refresh: BTreeSet<String>,
    issued: u64,
    rotate: bool,
    expires_in: Option<u64>,
    requests: Vec<TokenRequest>,
    client_secret: Option<String>,
    /// Instead of a token: this raw answer.
    raw_answer: Option<Vec<u8>>,
}

pub(crate) struct TokenEndpoint {
    addr: SocketAddr,
    /// With TLS: the CA that issued the endpoint's certificate (PEM).
    ca_pem: Option<String>,
    state: Arc<Mutex<State>>,
    count: watch::Sender<usize>,
    open: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenEndpoint {
    /// Accepts `refresh_token`; issued access tokens are valid on `smtp`
    /// for `username`.
    pub(crate) async fn start(refresh_token: &str, username: &str, smtp: &BearerTokens) -> TokenEndpoint {
        TokenEndpoint::start_with(refresh_token, username, smtp, None).await
    }

    /// [`start`](Self::start), over TLS (`https://localhost:port`) with a
    /// certificate from a CA made for it ([`ca_pem`](Self::ca_pem)).
    pub(crate) async fn start_tls(refresh_token: &str, username: &str, smtp: &BearerTokens) -> TokenEndpoint {
        let (ca_pem, acceptor) = tls_acceptor();
        let mut endpoint = TokenEndpoint::start_with(refresh_token, username, smtp, Some(acceptor)).await;
        endpoint.ca_pem = Some(ca_pem);
        endpoint
    }

    pub(crate) fn ca_pem(&self) -> &str {
        self.ca_pem.as_deref().expect("a TLS endpoint")
    }

    async fn start_with(
        refresh_token: &str,
        username: &str,
        smtp: &BearerTokens,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> TokenEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State {
            valid_refresh: BTreeSet::from([refresh_token.to_owned()]),
            issued: 0,
            rotate: false,
            expires_in: Some(3600),
            requests: Vec::new(),
            client_secret: None,
            raw_answer: None,
        }));
        let count = watch::channel(0).0;
        let open = watch::channel(true).0;
        let task = tokio::spawn(serve(
            listener,
            state.clone(),
            count.clone(),
            open.subscribe(),
            username.to_owned(),
            smtp.clone(),
            tls,
        ));
        TokenEndpoint {
            addr,
            ca_pem: None,
            state,
            count,
            open,
            task,
        }
    }

    pub(crate) fn url(&self) -> String {
        match self.ca_pem {
            Some(_) => format!("https://localhost:{}/oauth2/token", self.addr.port()),
            None => format!("http://{}/oauth2/token", self.addr),
        }
    }

    /// Each answer carries a new refresh token; the old one stops working.
    pub(crate) fn rotate(&self, on: bool) {
        self.state.lock().unwrap().rotate = on;
    }

    /// `expires_in` of the tokens issued (`None`: left out).
    pub(crate) fn expires_in(&self, seconds: Option<u64>) {
        self.state.lock().unwrap().expires_in = seconds;
    }

    /// Requires this client secret.
    pub(crate) fn require_client_secret(&self, secret: &str) {
        self.state.lock().unwrap().client_secret = Some(secret.to_owned());
    }

    /// Answers every request with these bytes instead.
    pub(crate) fn answer_raw(&self, bytes: &[u8]) {
        self.state.lock().unwrap().raw_answer = Some(bytes.to_vec());
    }

    pub(crate) fn revoke(&self, refresh_token: &str) {
        self.state.lock().unwrap().valid_refresh.remove(refresh_token);
    }

    pub(crate) fn accepts(&self, refresh_token: &str) -> bool {
        self.state.lock().unwrap().valid_refresh.contains(refresh_token)
    }

    /// Requests answered (or refused) so far.
    pub(crate) fn requests(&self) -> usize {
        *self.count.borrow()
    }

    pub(crate) fn request_log(&self) -> Vec<TokenRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Waits (no sleeping) until `n` requests arrived.
    pub(crate) async fn wait_requests(&self, n: usize) {
        let mut rx = self.count.subscribe();
        tokio::time::timeout(std::time::Duration::from_secs(10), rx.wait_for(|c| *c >= n))
            .await
            .expect("requests arrived in time")
            .expect("endpoint running");
    }

    /// Holds answers (requests are still counted) until `release`.
    pub(crate) fn hold(&self) {
        self.open.send_replace(false);
    }

    pub(crate) fn release(&self) {
        self.open.send_replace(true);
    }
}

async fn serve(
    listener: TcpListener,
    state: Arc<Mutex<State>>,
    count: watch::Sender<usize>,
    open: watch::Receiver<bool>,
    username: String,
    smtp: BearerTokens,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        while tasks.try_join_next().is_some() {}
        let (state, count, open, username, smtp) = (
            state.clone(),
            count.clone(),
            open.clone(),
            username.clone(),
            smtp.clone(),
        );
        let tls = tls.clone();
        tasks.spawn(async move {
            match tls {
                None => handle(stream, state, count, open, username, smtp).await,
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        handle(stream, state, count, open, username, smtp).await;
                    }
                }
            }
        });
    }
}

/// A CA, and a TLS acceptor with a certificate it issued for `localhost`
/// and 127.0.0.1.
fn tls_acceptor() -> (String, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("leaf");
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .expect("server config");
    (
        ca_cert.pem(),
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)),
    )
}

async fn handle<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    state: Arc<Mutex<State>>,
    count: watch::Sender<usize>,
    mut open: watch::Receiver<bool>,
    username: String,
    smtp: BearerTokens,
) {
    let Some(body) = read_request(&mut stream).await else {
        return;
    };
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let request = TokenRequest {
        grant_type: field("grant_type").unwrap_or_default(),
        refresh_token: field("refresh_token").unwrap_or_default(),
        client_id: field("client_id").unwrap_or_default(),
        client_secret: field("client_secret"),
        scope: field("scope"),
    };
    state.lock().unwrap().requests.push(request.clone());
    count.send_modify(|c| *c += 1);
    let _ = open.wait_for(|open| *open).await;
    let answer = {
        let mut st = state.lock().unwrap();
        if let Some(raw) = &st.raw_answer {
            raw.clone()
        } else if request.grant_type != "refresh_token" {
            respond(400, r#"{"error":"unsupported_grant_type"}"#)
        } else if st.client_secret.is_some() && st.client_secret != request.client_secret {
            respond(401, r#"{"error":"invalid_client"}"#)
        } else if !st.valid_refresh.contains(&request.refresh_token) {
            respond(
                400,
                r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
            )
        } else {
            st.issued += 1;
            let access = format!("ya29.access-{}-{}", st.issued, std::process::id());
            smtp.allow(&username, &access);
            let mut json = format!(r#"{{"access_token":"{access}","token_type":"Bearer""#);
            if let Some(expires_in) = st.expires_in {
                json.push_str(&format!(r#","expires_in":{expires_in}"#));
            }
            if st.rotate {
                let next = format!("1//rotated-refresh-{}", st.issued);
                st.valid_refresh.remove(&request.refresh_token);
                st.valid_refresh.insert(next.clone());
                json.push_str(&format!(r#","refresh_token":"{next}""#));
            }
            json.push('}');
            respond(200, &json)
        }
    };
    let _ = stream.write_all(&answer).await;
    let _ = stream.shutdown().await;
}

fn respond(status: u16, json: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Bad Request",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    )
    .into_bytes()
}

/// The body of one request (head up to 16 KiB, body by Content-Length).
async fn read_request<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 * 1024 {
            return None;
        }
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + length {
            return Some(buf[end + 4..end + 4 + length].to_vec());
        }
    }
}
