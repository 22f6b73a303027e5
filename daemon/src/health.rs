//! `/healthz` (the process is alive), `/readyz` (503 until the first full
//! reconcile is done and subnet.env is written), `/metrics` and
//! `/debug/errors` (the last warnings and errors logged), over a
//! deliberately small HTTP/1.1 server: one request per connection, GET only.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("listening on --healthz-addr {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `addr` and serves until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> Result<tokio::task::JoinHandle<()>, HealthError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError::Bind { addr, source })?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    conn.read(&mut buf),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let req = String::from_utf8_lossy(&buf[..n]);
                let (status, ctype, body) = answer(req.lines().next().unwrap_or(""), &metrics);
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    }))
}

fn answer(request_line: &str, m: &Metrics) -> (&'static str, &'static str, String) {
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return ("405 Method Not Allowed", "text/plain", "GET only\n".into());
    }
    let text = "text/plain; charset=utf-8";
    match path.split('?').next().unwrap_or("") {
        "/healthz" => ("200 OK", text, "weftd is running\n".into()),
        "/readyz" if m.ready() => ("200 OK", text, "ready\n".into()),
        "/readyz" => (
            "503 Service Unavailable",
            text,
            "not ready: first reconcile not done\n".into(),
        ),
        "/debug/errors" => ("200 OK", text, crate::recent::render()),
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            m.render(),
        ),
        _ => ("404 Not Found", text, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_first_reconcile() {
        let m = Metrics::default();
        assert_eq!(answer("GET /healthz HTTP/1.1", &m).0, "200 OK");
        assert_eq!(
            answer("GET /readyz HTTP/1.1", &m).0,
            "503 Service Unavailable"
        );
        m.set_ready();
        assert_eq!(answer("GET /readyz HTTP/1.1", &m).0, "200 OK");
        assert!(
            answer("GET /metrics HTTP/1.1", &m)
                .2
                .contains("weft_ready 1")
        );
        assert_eq!(
            answer("POST /readyz HTTP/1.1", &m).0,
            "405 Method Not Allowed"
        );
        assert_eq!(answer("GET /nope HTTP/1.1", &m).0, "404 Not Found");
    }
}
