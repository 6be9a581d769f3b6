//! `fusetrace serve`'s HTTP side: hyper's HTTP/1 server on a
//! single-threaded tokio runtime in its own thread. hyper because it is
//! the most used and fuzzed Rust HTTP implementation and lets us bound
//! what a client may cost: header size (`max_buf_size`), the time to send
//! the header, the connection's life and the connections at once. A slow
//! or hostile client holds one of those connections at most; the kernel
//! keeps counting, and the thread that reads the kernel's maps only ever
//! answers a scrape, never waits on a client.
//!
//! Read-only: GET and HEAD on `/metrics` (and a pointer to it on `/`);
//! other methods get 405, other paths 404, a request with a body 413.
//!
//! With `--web.config.file` ([`web_config`]): TLS per connection (the
//! handshake counts against the header time, so a client that never
//! finishes it holds its slot no longer than one that never sends a
//! header), then basic auth per request, both from the configuration in
//! force when the connection or request came (SIGHUP swaps it).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, mpsc},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{
        ACCEPT, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, TRANSFER_ENCODING,
        WWW_AUTHENTICATE,
    },
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{Semaphore, oneshot},
};

use super::web_config::{self, Credentials};

/// Connections served at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 32;
/// Time a client has to finish the TLS handshake, and then again to send
/// its request header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection lives, whatever it does.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Largest request header accepted (hyper's smallest allowed buffer).
const MAX_HEADER_BYTES: usize = 8192;
/// How long a scrape waits for the collector thread.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A scrape handed to the collector: which format, and where the body goes.
pub struct Scrape {
    pub openmetrics: bool,
    pub reply: oneshot::Sender<String>,
}

/// The server thread; dropping [`Server::stop`]s it.
pub struct Server {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves on `listener` (already bound, so that a taken port fails
    /// before any probe is attached), handing scrapes to `scrapes` (the
    /// main thread's messages, of which a [`Scrape`] is one), with the TLS
    /// and users `web` holds at each connection and request.
    pub fn spawn<M: From<Scrape> + Send + 'static>(
        listener: std::net::TcpListener,
        scrapes: mpsc::Sender<M>,
        web: web_config::Shared,
    ) -> Result<Server> {
        listener
            .set_nonblocking(true)
            .context("setting the listening socket non-blocking")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            // bcrypt runs there (one per new set of credentials): two
            // at once at most, on a 2-CPU host one core stays free.
            .max_blocking_threads(2)
            .build()
            .context("starting the HTTP runtime")?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("fusetrace-http".into())
            .spawn(move || runtime.block_on(accept_loop(listener, scrapes, web, stopped)))
            .context("starting the HTTP thread")?;
        Ok(Server {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop<M: From<Scrape> + Send + 'static>(
    listener: std::net::TcpListener,
    scrapes: mpsc::Sender<M>,
    web: web_config::Shared,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("cannot serve: {e}");
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of descriptors and the like: wait, then go on.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let scrapes = scrapes.clone();
        let web = web.clone();
        let tls = web_config::current(&web).tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Some(tls) = tls else {
                serve(stream, scrapes, web).await;
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            // A failed handshake (plain HTTP, no or a wrong client
            // certificate) just ends the connection.
            if let Ok(Ok(stream)) =
                tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await
            {
                serve(stream, scrapes, web).await;
            }
        });
    }
}

/// HTTP/1 on one connection, plain or TLS, within its bounds.
async fn serve<M, IO>(io: IO, scrapes: mpsc::Sender<M>, web: web_config::Shared)
where
    M: From<Scrape> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(req, scrapes.clone(), web.clone()));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(io), service);
    let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
}

/// Whether `req` may be answered: no users configured, or its Basic
/// credentials are one of them.
async fn authorized(req: &Request<Incoming>, web: &web_config::Shared) -> bool {
    let Some(auth) = web_config::current(web).auth.clone() else {
        return true;
    };
    let Some(credentials) =
        Credentials::from_header(req.headers().get(AUTHORIZATION).map(|v| v.as_bytes()))
    else {
        return false;
    };
    if let Some(allowed) = auth.cached(&credentials) {
        return allowed;
    }
    // bcrypt takes tens of milliseconds: off this thread, which serves
    // every other connection.
    tokio::task::spawn_blocking(move || auth.verify(&credentials))
        .await
        .unwrap_or(false)
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("a valid header"),
    );
    r
}

async fn handle<M: From<Scrape>>(
    req: Request<Incoming>,
    scrapes: mpsc::Sender<M>,
    web: web_config::Shared,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if !authorized(&req, &web).await {
        // As exporter-toolkit answers, less the body: nothing to read.
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
        return Ok(r);
    }
    let path = req.uri().path();
    if path != "/metrics" && path != "/" {
        return Ok(respond(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found; metrics are at /metrics\n",
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = respond(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET and HEAD\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let has_body = req.headers().contains_key(TRANSFER_ENCODING)
        || req
            .headers()
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return Ok(respond(
            StatusCode::PAYLOAD_TOO_LARGE,
            PLAIN,
            "no request body is taken\n",
        ));
    }
    if path == "/" {
        return Ok(respond(
            StatusCode::OK,
            PLAIN,
            "fusetrace serve: metrics at /metrics\n",
        ));
    }
    let openmetrics = wants_openmetrics(
        req.headers()
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    );
    let (reply, body) = oneshot::channel();
    if scrapes
        .send(M::from(Scrape { openmetrics, reply }))
        .is_err()
    {
        return Ok(respond(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "shutting down\n",
        ));
    }
    Ok(match tokio::time::timeout(SCRAPE_TIMEOUT, body).await {
        Ok(Ok(body)) => respond(
            StatusCode::OK,
            if openmetrics { OPENMETRICS } else { TEXT },
            body,
        ),
        _ => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "no metrics collected in time\n",
        ),
    })
}

/// Content negotiation as Prometheus does it: OpenMetrics when the client
/// ranks it at least as high as the 0.0.4 text format (by `q`), else text.
pub fn wants_openmetrics(accept: &str) -> bool {
    let (mut om, mut text) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" | "*/*" | "text/*" => text = text.max(q),
            _ => {}
        }
    }
    om > 0.0 && om >= text
}

#[cfg(test)]
mod tests {
    use super::wants_openmetrics;

    #[test]
    fn negotiates_like_prometheus() {
        // Prometheus 2.42's scrape header.
        assert!(wants_openmetrics(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!wants_openmetrics(""));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics("text/plain;version=0.0.4"));
        assert!(!wants_openmetrics(
            "application/openmetrics-text;q=0.2,text/plain;q=0.9"
        ));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
    }
}
