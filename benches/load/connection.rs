//! The HTTP/1.1 keep-alive client the load tools share (http-load, soak-load): one hyper
//! connection per concurrent sender. Included by each binary with `#[path]`; the benches
//! library stays empty.

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use ferrobeam::message::{Message, json};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value as Json;

/// One connection's sender and its host header.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    pub authority: String,
}

impl Connection {
    /// Whether the server closed the connection (then open a new one).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Connects to `authority` (host:port) without Nagle's delay.
    pub async fn open(authority: &str) -> Result<Self> {
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        stream.set_nodelay(true)?;
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The driver ends with the connection; its error shows up on the next request.
        tokio::spawn(async move {
            let _ = driver.await;
        });
        Ok(Self {
            sender,
            authority: authority.to_owned(),
        })
    }

    /// Sends one request and reads the whole answer.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        media: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        self.sender.ready().await?;
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, media)
            .body(Full::new(body))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// [`Connection::request`], answered with JSON and a success status (else an error).
    pub async fn json(
        &mut self,
        method: Method,
        path: &str,
        media: &str,
        body: Bytes,
    ) -> Result<Json> {
        let (status, body) = self.request(method, path, media, body).await?;
        let json: Json = serde_json::from_slice(&body).unwrap_or(Json::Null);
        if !status.is_success() {
            bail!("{path}: HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(json)
    }
}

/// A message in its JSON form, as a request body.
pub fn message_body(message: &Message) -> Bytes {
    Bytes::from(serde_json::to_vec(&json::to_json(message)).expect("a JSON value serializes"))
}
