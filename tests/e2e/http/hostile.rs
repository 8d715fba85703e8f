//! Hostile traffic on loopback, bounded in count and time: a slow-loris client, 1000
//! connections at once, a client that vanishes mid-stream. Each must leave the daemon
//! serving, with nothing lost and nothing stuck in `processing/`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nrvna_tests::{TestWs, wait_for};

use super::{HttpDaemon, post_json};

fn host_port(http: &HttpDaemon) -> String {
    http.base.trim_start_matches("http://").to_owned()
}

/// One complete `GET /health` over a fresh connection; the status code.
fn health(addr: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn slow_loris_a_thousand_connections_and_vanishing_clients_leave_it_serving() {
    let ws = TestWs::new();
    let http = HttpDaemon::start(&ws, 2, &[]);
    let addr = host_port(&http);

    // Slow loris: 50 connections dribbling a header byte at a time.
    let mut loris: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-slow: ")
                .unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        for s in &mut loris {
            let _ = s.write_all(b"a");
        }
        // Others are served meanwhile.
        assert_eq!(health(&addr), 200);
        std::thread::sleep(Duration::from_millis(200));
    }

    // 1000 connections at once, each asking for /health.
    let threads: Vec<_> = (0..1000)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || health(&addr))
        })
        .collect();
    let ok = threads
        .into_iter()
        .map(|t| t.join().unwrap_or(0))
        .filter(|&code| code == 200)
        .count();
    assert_eq!(ok, 1000, "only {ok} of 1000 connections were answered");
    drop(loris);

    // Clients that vanish mid-stream: they send a streamed request and close at once.
    for _ in 0..5 {
        let mut s = TcpStream::connect(&addr).unwrap();
        let body = r#"{"messages":[{"role":"user","content":"Write a long essay."}],"max_tokens":500,"stream":true}"#;
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).unwrap();
        let mut first = [0u8; 64];
        let _ = s.read(&mut first);
        drop(s);
    }
    let settled = wait_for(Duration::from_secs(60), || {
        ws.entries("processing").is_empty() && ws.entries("input/ready").is_empty()
    });
    assert!(settled, "stuck: {:?}", ws.entries("processing"));
    // Every vanished client's job ended, cancelled: none lost, none left running.
    assert_eq!(ws.entries("failed").len(), 5);
    for id in ws.entries("failed") {
        assert_eq!(ws.meta("failed", &id)["status"], "cancelled");
    }
    // Still serving: a chat completes.
    let (status, _, text) = post_json(
        &http.url("/v1/chat/completions"),
        r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":4}"#,
        &[],
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(ws.entries("output").len(), 1);
}

#[test]
fn a_connection_that_sends_its_header_slowly_is_closed_at_the_header_timeout() {
    let ws = TestWs::new();
    let http = HttpDaemon::start(&ws, 1, &["--http-header-timeout", "1"]);
    let addr = host_port(&http);
    let mut loris: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ")
                .unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    let mut closed_at: Vec<Option<Duration>> = vec![None; loris.len()];
    while started.elapsed() < Duration::from_secs(6) && closed_at.iter().any(Option::is_none) {
        for (s, closed) in loris.iter_mut().zip(&mut closed_at) {
            if closed.is_some() {
                continue;
            }
            // Still dribbling: a byte of header every 100 ms, never the end of it.
            let wrote = s.write_all(b"a");
            let mut buf = [0u8; 256];
            let read = s.read(&mut buf);
            let open = wrote.is_ok()
                && matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            if !open {
                *closed = Some(started.elapsed());
            }
        }
        // A client that sends its header at once is served meanwhile.
        assert_eq!(health(&addr), 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, closed) in closed_at.iter().enumerate() {
        let at = closed.unwrap_or_else(|| panic!("slow connection {i} still open after 6 s"));
        // Closed by the 1 s timeout, not before (headers were still coming).
        assert!(
            at >= Duration::from_millis(900) && at < Duration::from_secs(4),
            "slow connection {i} closed after {at:?}"
        );
    }
    assert_eq!(health(&addr), 200);
}
