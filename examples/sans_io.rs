//! The protocol core on its own: sends three notification emails over a real
//! loopback TCP connection to a small SMTP sink started in this process, and
//! prints what the server received.
//!
//! It drives relaymail's sans-IO protocol core with plain blocking std IO to
//! show how little a shell needs: write the session's output, feed it what
//! the server says, act on its events. (The async transport and the pooled
//! `Mailer` build on exactly this loop.)
//!
//! Run: `cargo run --example sans_io`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;

use relaymail::proto::session::{Envelope, Event, Session, SessionConfig, Transaction};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (received_tx, received_rx) = mpsc::channel();
    let server = thread::spawn(move || sink(listener, received_tx));

    let notifications = [
        (
            "ana@example.net",
            "Reset your password",
            "Follow this link to choose a new password.",
        ),
        (
            "ops@example.net",
            "Disk almost full",
            "/var is at 97%.\n.\nThis line follows a lone dot.",
        ),
        (
            "billing@example.net",
            "Invoice INV-2041",
            "Your invoice for November is attached.",
        ),
    ];

    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut session = Session::new(SessionConfig::new("app.example.com"))?;
    let mut queued = false;
    let mut done = 0;
    let mut buf = [0u8; 4096];
    while !session.is_closed() {
        if session.wants_write() {
            stream.write_all(session.output())?;
            let n = session.output().len();
            session.consume_output(n);
        }
        while let Some(event) = session.poll_event() {
            match event {
                Event::Ready if !queued => {
                    queued = true;
                    let caps = session.capabilities().map(|c| c.extensions().collect::<Vec<_>>());
                    println!("connected to {addr}, server offers {caps:?}");
                    for (to, subject, body) in notifications {
                        let message = format!(
                            "From: Example App <noreply@example.com>\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n{body}\r\n"
                        );
                        let envelope =
                            Envelope::new(Some("noreply@example.com".parse()?), vec![to.parse()?])?;
                        session.send(Transaction::new(envelope, message.into_bytes()))?;
                    }
                }
                Event::Transaction(outcome) => {
                    done += 1;
                    match outcome.result {
                        Ok(reply) => println!("message {} accepted: {reply}", outcome.id.value()),
                        Err(e) => println!("message {} failed: {e}", outcome.id.value()),
                    }
                    if done == notifications.len() {
                        session.quit()?;
                    }
                }
                Event::Closed => println!("session closed"),
                _ => {}
            }
        }
        if session.wants_write() {
            continue;
        }
        if session.is_closed() {
            break;
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            session.receive_eof()?;
        } else {
            session.receive(&buf[..n])?;
        }
    }
    drop(stream);
    server.join().map_err(|_| "sink thread panicked")??;

    println!("\nthe server received:");
    for (from, to, data) in received_rx.try_iter() {
        println!("--- MAIL FROM:<{from}> RCPT TO:<{}>", to.join(">, <"));
        print!("{data}");
    }
    Ok(())
}

/// A minimal SMTP sink for one connection: PIPELINING, DATA with
/// dot-unstuffing. It exists only to give the example a real peer.
fn sink(listener: TcpListener, received: mpsc::Sender<(String, Vec<String>, String)>) -> std::io::Result<()> {
    let (conn, _) = listener.accept()?;
    let mut out = conn.try_clone()?;
    let mut lines = BufReader::new(conn);
    out.write_all(b"220 sink.example ESMTP ready\r\n")?;
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end();
        let verb = cmd.get(..4).unwrap_or(cmd).to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-sink.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            "MAIL" => {
                from = path(cmd);
                b"250 2.1.0 Ok\r\n"
            }
            "RCPT" => {
                to.push(path(cmd));
                b"250 2.1.5 Ok\r\n"
            }
            "DATA" => {
                out.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                let _ = received.send((std::mem::take(&mut from), std::mem::take(&mut to), data));
                b"250 2.0.0 Ok: queued\r\n"
            }
            "QUIT" => {
                out.write_all(b"221 2.0.0 Bye\r\n")?;
                return Ok(());
            }
            _ => b"502 5.5.2 Error: command not recognized\r\n",
        };
        out.write_all(reply)?;
    }
}

fn path(cmd: &str) -> String {
    let start = cmd.find('<').map_or(0, |i| i + 1);
    let end = cmd.rfind('>').unwrap_or(cmd.len());
    cmd.get(start..end).unwrap_or_default().to_owned()
}
