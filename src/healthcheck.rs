//! `drisc healthcheck`: asks a running server's `GET /readyz` and turns the answer
//! into an exit code, for a container's HEALTHCHECK or a supervisor. The image has
//! no curl: this is the server's own binary, using the HTTP client it already links
//! (hyper), over plain HTTP to the node's own port.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use url::{Position, Url};

use crate::config::Settings;

/// More than any `/readyz` answer; a larger one is not drisc's.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// Exits 0 (`Ok`) only when `url` (or the configured server's `/readyz`) answers
/// 200 within `timeout`.
pub fn run(config: Option<&Path>, url: Option<String>, timeout: Duration) -> anyhow::Result<()> {
    let url = match url {
        Some(url) => url,
        None => default_url(&Settings::load(config)?)?,
    };
    let url = Url::parse(&url).with_context(|| format!("--url {url:?} is not a URL"))?;
    if url.scheme() != "http" {
        bail!("--url {url}: only http:// (the node's own port; drisc does not serve TLS itself)");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, body) = runtime
        .block_on(async { tokio::time::timeout(timeout, get(&url)).await })
        .map_err(|_| anyhow::anyhow!("{url}: no answer within {timeout:?}"))?
        .with_context(|| format!("{url}: no answer"))?;
    if status == 200 {
        println!("{body}");
        Ok(())
    } else {
        bail!("{url}: not ready ({status}): {body}")
    }
}

/// `http://<server.host>:<server.port>/readyz`, with the loopback address of the
/// same family in place of a wildcard host (which one cannot connect to).
pub fn default_url(settings: &Settings) -> anyhow::Result<String> {
    let port = settings.server.port;
    if port == 0 {
        bail!("server.port is 0 (the server picks a free port at start): pass --url");
    }
    let host = settings.server.host.trim_start_matches('[').trim_end_matches(']');
    let host = match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() && ip.is_ipv4() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Ok(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        Ok(ip) => ip,
        Err(_) => return Ok(format!("http://{host}:{port}/readyz")),
    };
    Ok(match host {
        IpAddr::V4(ip) => format!("http://{ip}:{port}/readyz"),
        IpAddr::V6(ip) => format!("http://[{ip}]:{port}/readyz"),
    })
}

async fn get(url: &Url) -> anyhow::Result<(u16, String)> {
    let addrs = url.socket_addrs(|| None)?;
    let stream = tokio::net::TcpStream::connect(&*addrs).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let request = Request::get(&url[Position::BeforePath..])
        .header(hyper::header::HOST, &url[Position::BeforeHost..Position::AfterPort])
        .header(hyper::header::USER_AGENT, "drisc-healthcheck")
        .body(Empty::<Bytes>::new())?;
    let exchange = async {
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
            .to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).trim().to_owned()))
    };
    // The connection is driven alongside the exchange; it ends with it.
    tokio::select! {
        answer = exchange => answer,
        ended = connection => {
            ended?;
            bail!("the server closed the connection without answering")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_for(host: &str, port: u16) -> anyhow::Result<String> {
        let mut settings = Settings::defaults()?;
        settings.server.host = host.into();
        settings.server.port = port;
        default_url(&settings)
    }

    #[test]
    fn the_default_url_reaches_a_wildcard_host_through_loopback() {
        assert_eq!(url_for("0.0.0.0", 8080).unwrap(), "http://127.0.0.1:8080/readyz");
        assert_eq!(url_for("::", 9000).unwrap(), "http://[::1]:9000/readyz");
        assert_eq!(url_for("[::]", 9000).unwrap(), "http://[::1]:9000/readyz");
        assert_eq!(url_for("127.0.0.1", 8080).unwrap(), "http://127.0.0.1:8080/readyz");
        assert_eq!(url_for("10.1.2.3", 80).unwrap(), "http://10.1.2.3:80/readyz");
        assert_eq!(url_for("localhost", 8080).unwrap(), "http://localhost:8080/readyz");
        let err = url_for("0.0.0.0", 0).unwrap_err().to_string();
        assert!(err.contains("server.port"), "{err}");
    }
}
