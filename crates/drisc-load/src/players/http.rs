//! Lean HTTP/1.1 keep-alive clients (hyper), over plain TCP or TLS.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use crate::target::{Sources, Target, Tls};

/// How long one request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Browsers post the body as a string, so players send `text/plain` (PROTOCOL 1.2).
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain;charset=UTF-8");

/// One keep-alive connection; one request at a time.
pub struct HttpConn {
    sender: SendRequest<Full<Bytes>>,
}

impl HttpConn {
    pub async fn open(sources: &Sources, target: &Target, tls: &Tls) -> Result<Self> {
        let stream = target.connect(sources, tls).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { sender })
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        host: &HeaderValue,
        auth: &HeaderValue,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        let exchange = async {
            self.sender.ready().await?;
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, host.clone())
                .header(AUTHORIZATION, auth.clone())
                .header(CONTENT_TYPE, TEXT_PLAIN)
                .body(Full::new(body))?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .context("HTTP request timed out")?
    }
}

/// Keep-alive connections shared by the players of one process.
pub struct HttpPool {
    idle: Mutex<Vec<HttpConn>>,
    sources: Arc<Sources>,
    target: Target,
    tls: Tls,
    host: HeaderValue,
}

/// Idle connections kept beyond this are closed.
const MAX_IDLE: usize = 64;

impl HttpPool {
    pub fn new(sources: Arc<Sources>, target: Target, tls: Tls) -> Result<Self> {
        let host = HeaderValue::from_str(&target.authority)?;
        Ok(Self {
            idle: Mutex::new(Vec::new()),
            sources,
            target,
            tls,
            host,
        })
    }

    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    pub async fn open(&self) -> Result<HttpConn> {
        HttpConn::open(&self.sources, &self.target, &self.tls).await
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        auth: &HeaderValue,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        for attempt in 0.. {
            let reused = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            let fresh = reused.is_none();
            let mut conn = match reused {
                Some(conn) if !conn.is_closed() => conn,
                _ => self.open().await?,
            };
            match conn.send(method.clone(), path, &self.host, auth, body.clone()).await {
                Ok(answer) => {
                    if let Ok(mut idle) = self.idle.lock()
                        && idle.len() < MAX_IDLE
                    {
                        idle.push(conn);
                    }
                    return Ok(answer);
                }
                // A kept-alive connection may have been closed by the server meanwhile.
                Err(_) if !fresh && attempt < 2 => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }
}
