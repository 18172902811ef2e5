//! Where a connection goes: Happy Eyeballs over a resolver the test
//! controls, the source address, and backup relays.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use relaymail::testing::{Fault, ServerConfig};
use relaymail::{Connector, Resolver, Stage, TlsMode};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

/// A port on 127.0.0.1 where nothing listens (taken, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("address").port()
}

/// A listener whose accept queue is full: a connect to it gets no answer
/// (Linux drops the SYN), so the attempt hangs as it would for a
/// blackholed address. The returned streams keep the queue full.
async fn hanging_address() -> (SocketAddr, tokio::net::TcpListener, Vec<TcpStream>) {
    let ip: IpAddr = match TcpSocket::new_v6().and_then(|s| s.bind("[::1]:0".parse().expect("v6")).map(|_| s))
    {
        Ok(_) => "::1".parse().expect("v6"),
        // No IPv6 loopback here: another loopback address does as well.
        Err(_) => "127.0.0.1".parse().expect("v4"),
    };
    let socket = if ip.is_ipv6() {
        TcpSocket::new_v6()
    } else {
        TcpSocket::new_v4()
    }
    .expect("socket");
    socket.bind(SocketAddr::new(ip, 0)).expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("address");
    let mut fillers = Vec::new();
    // Fill the queue: connects complete until it is full, then one hangs.
    loop {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("filling the accept queue: {e}"),
            Err(_) => break,
        }
        assert!(fillers.len() < 64, "the accept queue never filled");
    }
    (addr, listener, fillers)
}

/// Opens a connection with these settings.
async fn connect(s: relaymail::SmtpSettings) -> Result<relaymail::Connection, relaymail::Error> {
    Connector::new(s).expect("connector").connect().await
}

fn resolver(addrs: Vec<SocketAddr>) -> Resolver {
    Resolver::new(move |_host, _port| {
        let addrs = addrs.clone();
        Box::pin(async move { Ok(addrs) })
    })
}

#[tokio::test]
async fn happy_eyeballs_does_not_wait_for_a_hanging_address() {
    let srv = server(ServerConfig::new()).await;
    let (dead, _listener, _fillers) = hanging_address().await;
    let good = srv.addr();
    let settings = settings(&srv, TlsMode::None)
        .host("relay.example")
        .timeout(Duration::from_secs(60))
        .build()
        .expect("settings");
    let connector = Connector::new(settings)
        .expect("connector")
        .with_resolver(resolver(vec![dead, good]));
    let started = Instant::now();
    // Tried one after the other, the hanging address would hold the
    // connection for its own timeout (30 s: half of the 60 s connect phase);
    // this bound is the test's, far above the expected ~250 ms.
    let conn = tokio::time::timeout(Duration::from_secs(10), connector.connect())
        .await
        .expect("connected long before the hanging attempt's own timeout")
        .expect("connected");
    let took = started.elapsed();
    assert_eq!(conn.info().peer, good);
    assert!(
        took >= Duration::from_millis(250),
        "the hanging address was tried first, and the good one 250 ms later: {took:?}"
    );
    println!(
        "happy eyeballs: connected through the second address in {} ms",
        took.as_millis()
    );
    conn.quit().await.expect("quit");
}

#[tokio::test]
async fn every_address_tried_is_listed_with_its_outcome() {
    let a: SocketAddr = format!("127.0.0.1:{}", closed_port()).parse().expect("address");
    let b: SocketAddr = format!("127.0.0.1:{}", closed_port()).parse().expect("address");
    let settings = relaymail::SmtpSettings::builder()
        .host("relay.example")
        .tls(TlsMode::None)
        .sender("alerts@example.com")
        .timeout(Duration::from_secs(5))
        .build()
        .expect("settings");
    let connector = Connector::new(settings)
        .expect("connector")
        .with_resolver(resolver(vec![a, b]));
    let e = connector.connect().await.expect_err("nothing listens");
    assert_eq!(e.stage(), Some(Stage::Connect));
    let text = e.to_string();
    for addr in [a, b] {
        assert!(text.contains(&format!("{addr}: Connection refused")), "{text}");
    }
    assert!(text.contains("relay.example:25"), "{text}");
    assert!(e.hint().expect("hint").contains("nothing is listening"), "{e}");
}

#[tokio::test]
async fn connections_come_from_the_source_address() {
    let srv = server(ServerConfig::new()).await;
    let from: IpAddr = "127.0.0.2".parse().expect("ip");
    let settings = settings(&srv, TlsMode::None)
        .source_address(from)
        .build()
        .expect("settings");
    let conn = connect(settings).await.expect("connected");
    assert_eq!(conn.info().local.ip(), from);
    conn.quit().await.expect("quit");
    srv.wait_for_closed_sessions(1, WAIT).await.expect("closed");
    assert_eq!(srv.sessions()[0].peer.map(|p| p.ip()), Some(from));
}

#[tokio::test]
async fn a_source_address_that_is_not_ours_or_of_the_wrong_family_is_explained() {
    let srv = server(ServerConfig::new()).await;
    // TEST-NET-2: never an address of this machine; binding fails locally
    // and nothing is sent.
    let foreign: IpAddr = "198.51.100.7".parse().expect("ip");
    let s = settings(&srv, TlsMode::None)
        .source_address(foreign)
        .build()
        .expect("settings");
    let e = connect(s).await.expect_err("cannot bind");
    assert_eq!(e.stage(), Some(Stage::Connect));
    assert!(e.hint().expect("hint").contains("198.51.100.7"), "{e}");
    assert!(e.hint().expect("hint").contains("address of this machine"), "{e}");

    let v6: IpAddr = "::1".parse().expect("ip");
    let s = settings(&srv, TlsMode::None)
        .source_address(v6)
        .build()
        .expect("settings");
    let e = connect(s).await.expect_err("family");
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("only IPv4 addresses"), "{e}");
    assert_eq!(srv.connections_total(), 0);
}

#[tokio::test]
async fn a_backup_relay_takes_over_when_the_primary_refuses_connections() {
    let backup = server(ServerConfig::new()).await;
    let settings = settings(&backup, TlsMode::None)
        .port(u32::from(closed_port()))
        .backup_relays([format!("127.0.0.1:{}", backup.port())])
        .build()
        .expect("settings");
    let mut conn = connect(settings).await.expect("via the backup");
    assert_eq!(conn.info().relay.port(), backup.port());
    conn.send(envelope(&["ops@example.net"]), MESSAGE.to_vec())
        .await
        .map(|d| assert_eq!(d.relay().map(|r| r.port()), Some(backup.port())))
        .expect("delivered");
    conn.quit().await.expect("quit");
}

#[tokio::test]
async fn a_backup_relay_takes_over_from_a_421_greeting_but_not_from_a_554() {
    let busy = server(ServerConfig::new().fault(Fault::on_greeting().reply("421 4.3.2 Shutting down"))).await;
    let refusing = server(ServerConfig::new().fault(Fault::on_greeting().reply("554 5.7.1 Go away"))).await;
    let backup = server(ServerConfig::new().starttls(true)).await;
    // STARTTLS with the backup's CA: each relay is verified for its own name.
    let via = |primary: &relaymail::testing::TestServer| {
        settings(primary, TlsMode::StartTls)
            .backup_relays([format!("localhost:{}", backup.port())])
            .add_root_certificates_pem(backup.ca_pem())
            .build()
            .expect("settings")
    };
    let conn = connect(via(&busy)).await.expect("via the backup");
    assert_eq!(
        conn.info().relay.to_string(),
        format!("localhost:{}", backup.port())
    );
    assert!(conn.info().tls.is_some());
    conn.quit().await.expect("quit");
    assert_eq!(busy.connections_total(), 1);

    let e = connect(via(&refusing))
        .await
        .expect_err("a permanent refusal is not the relay being away");
    assert_eq!(e.stage(), Some(Stage::Greeting));
    assert_eq!(backup.connections_total(), 1, "the backup was not tried");
}

#[tokio::test]
async fn when_every_relay_is_down_the_error_names_each() {
    let (p1, p2) = (closed_port(), closed_port());
    let settings = relaymail::SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(p1))
        .tls(TlsMode::None)
        .backup_relays([format!("127.0.0.1:{p2}")])
        .sender("alerts@example.com")
        .timeout(Duration::from_secs(5))
        .build()
        .expect("settings");
    let e = connect(settings).await.expect_err("all down");
    assert_eq!(e.stage(), Some(Stage::Connect));
    let hint = e.hint().expect("hint");
    assert!(
        hint.starts_with(&format!(
            "every relay failed: 127.0.0.1:{p1} (connect), 127.0.0.1:{p2} (connect); nothing is listening"
        )),
        "{hint}"
    );
}
