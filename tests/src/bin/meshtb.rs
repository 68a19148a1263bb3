//! meshtb: the small real programs the sandbox, end-to-end tests and benchmarks run in pods.
use std::{
    convert::Infallible,
    io::{BufRead as _, BufReader, ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tests::pattern::{CLIENT_SEED, Pattern, SERVER_SEED, hex};

#[derive(Parser)]
#[command(about = "Test programs for mesh-agent's sandbox, tests and benchmarks")]
enum Cli {
    /// HTTP/1.1 and HTTP/2 (prior knowledge) server answering every request with
    /// `hello from NAME path=PATH` and an `x-served-by: NAME` header. Request headers steer
    /// it: `x-meshtb-status: CODE` answers CODE, `x-meshtb-delay-ms: N` waits first,
    /// `x-meshtb-reply-bytes: N` pads the body to N bytes. The request body is read whole
    /// first; its length comes back as `x-meshtb-body-length`, the Host (or HTTP/2
    /// :authority) it arrived with as `x-meshtb-host`.
    HttpServer {
        /// Port to listen on; repeat to listen on several.
        #[arg(long = "port", required = true)]
        ports: Vec<u16>,
        /// Named in each response, so clients see which pod answered.
        #[arg(long, default_value = "meshtb")]
        name: String,
        /// Answer every request with this status.
        #[arg(long)]
        status: Option<u16>,
    },
    /// TCP server: hashes everything a client sends until EOF, answers with one line
    /// (`sha256=… bytes=… peer=…`) followed by `--reply-bytes` of the pattern, then closes.
    Sink {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 0)]
        reply_bytes: usize,
    },
    /// TCP client for `sink`: sends `--bytes` of the pattern, half-closes, reads the answer,
    /// prints what it saw as key=value lines.
    Send {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        bytes: usize,
    },
    /// Connects and waits for the first byte or the end, printing how and when it ended.
    Probe {
        #[arg(long)]
        to: SocketAddr,
    },
    /// Open-loop HTTP load at a fixed rate: requests are sent on schedule whether or not
    /// earlier ones have finished, so a stall shows in the percentiles of every request
    /// caught behind it (no coordinated omission). Prints key=value results.
    Load {
        #[arg(long)]
        url: String,
        /// Requests per second.
        #[arg(long)]
        rate: u32,
        #[arg(long)]
        seconds: u32,
        /// HTTP/2 with prior knowledge (one connection, multiplexed); else HTTP/1.1 with a
        /// keep-alive pool that grows as concurrency needs.
        #[arg(long)]
        http2: bool,
        /// Host header (HTTP/1.1) or :authority (HTTP/2); default: the URL's.
        #[arg(long)]
        host: Option<String>,
        /// POST a body of this many bytes (0: GET without a body).
        #[arg(long, default_value_t = 0)]
        body_bytes: usize,
        /// Ask the server for a response body of this many bytes (`x-meshtb-reply-bytes`).
        #[arg(long)]
        reply_bytes: Option<usize>,
    },
    /// gRPC server (tonic) with the standard health service: the service named NAME (and
    /// the server as a whole) is SERVING, any other name is unknown, so a client can tell
    /// which server answered.
    GrpcServer {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        name: String,
    },
    /// gRPC client: one grpc.health.v1.Health/Check for `--service`, printing
    /// `status=SERVING` or `error=CODE`.
    GrpcCheck {
        #[arg(long)]
        to: SocketAddr,
        /// :authority of the call (the virtual service name and port).
        #[arg(long)]
        authority: String,
        #[arg(long)]
        service: String,
        /// Request metadata `key=value`; repeat for more.
        #[arg(long = "metadata")]
        metadata: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse() {
        Cli::HttpServer {
            ports,
            name,
            status,
        } => http_server(&ports, Behaviour { name, status }),
        Cli::Sink { port, reply_bytes } => sink(port, reply_bytes),
        Cli::Send { to, bytes } => send(to, bytes),
        Cli::Probe { to } => probe(to),
        Cli::GrpcServer { port, name } => grpc_server(port, name),
        Cli::Load {
            url,
            rate,
            seconds,
            http2,
            host,
            body_bytes,
            reply_bytes,
        } => load(
            &url,
            rate,
            seconds,
            http2,
            host,
            LoadBody {
                body_bytes,
                reply_bytes,
            },
        ),
        Cli::GrpcCheck {
            to,
            authority,
            service,
            metadata,
        } => grpc_check(to, &authority, service, &metadata),
    }
}

/// How the HTTP server answers.
struct Behaviour {
    name: String,
    status: Option<u16>,
}

fn http_server(ports: &[u16], behaviour: Behaviour) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let behaviour = Arc::new(behaviour);
    runtime.block_on(async move {
        let mut servers = tokio::task::JoinSet::new();
        for port in ports {
            let listener = tokio::net::TcpListener::bind(("0.0.0.0", *port)).await?;
            servers.spawn(serve_http(listener, Arc::clone(&behaviour)));
        }
        match servers.join_next().await {
            Some(result) => result?,
            None => Ok(()),
        }
    })
}

async fn serve_http(
    listener: tokio::net::TcpListener,
    behaviour: Arc<Behaviour>,
) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let behaviour = Arc::clone(&behaviour);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let behaviour = Arc::clone(&behaviour);
                async move { Ok::<_, Infallible>(answer(&behaviour, request, peer).await) }
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
        });
    }
}

async fn answer(
    behaviour: &Behaviour,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<LateBody> {
    let header =
        |name: &str| -> Option<u64> { request.headers().get(name)?.to_str().ok()?.parse().ok() };
    if let Some(delay) = header("x-meshtb-delay-ms") {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = match (header("x-meshtb-status"), behaviour.status) {
        (Some(code), _) => code as u16,
        (None, Some(code)) => code,
        (None, None) => 200,
    };
    // The client address as this server sees it: the proxy's when traffic went through the
    // mesh, the pod's own when it went direct.
    let mut body = format!(
        "hello from {} path={} (client {peer})\n",
        behaviour.name,
        request.uri().path()
    );
    if let Some(length) = header("x-meshtb-reply-bytes") {
        // Capped: a benchmark's reply size, not a way to make the server allocate gigabytes.
        let length = length.min(16 << 20) as usize;
        body.truncate(length);
        body.extend(std::iter::repeat_n('.', length - body.len()));
    }
    let body_delay = header("x-meshtb-body-delay-ms").map(Duration::from_millis);
    // Read the request body whole before answering, as a real application does: answering
    // early and closing would break a client still sending it.
    let (parts, request_body) = request.into_parts();
    let request_length = match http_body_util::BodyExt::collect(request_body).await {
        Ok(collected) => collected.to_bytes().len(),
        Err(_) => 0,
    };
    let request = Request::from_parts(parts, ());
    let mut response = Response::new(LateBody {
        delay: body_delay.map(|d| Box::pin(tokio::time::sleep(d))),
        data: Some(Bytes::from(body)),
    });
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    if let Ok(name) = hyper::header::HeaderValue::from_str(&behaviour.name) {
        response.headers_mut().insert("x-served-by", name);
    }
    response
        .headers_mut()
        .insert("x-meshtb-body-length", request_length.into());
    // The Host the request arrived with (HTTP/2: its :authority), so tests see what a host
    // rewrite made of it.
    let host = request
        .headers()
        .get(hyper::header::HOST)
        .cloned()
        .or_else(|| {
            let authority = request.uri().authority()?;
            hyper::header::HeaderValue::from_str(authority.as_str()).ok()
        });
    if let Some(host) = host {
        response.headers_mut().insert("x-meshtb-host", host);
    }
    // Echo the correlation headers the request arrived with, so tests see what hops added.
    for (seen, echo) in [
        ("x-request-id", "x-meshtb-request-id"),
        ("traceparent", "x-meshtb-traceparent"),
    ] {
        if let Some(value) = request.headers().get(seen) {
            response.headers_mut().insert(echo, value.clone());
        }
    }
    response
}

/// A body sent after the headers, `delay` later (`x-meshtb-body-delay-ms`: a response that
/// stalls mid-way).
struct LateBody {
    delay: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    data: Option<Bytes>,
}

impl hyper::body::Body for LateBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        if let Some(delay) = &mut self.delay {
            if delay.as_mut().poll(cx).is_pending() {
                return std::task::Poll::Pending;
            }
            self.delay = None;
        }
        std::task::Poll::Ready(self.data.take().map(|d| Ok(hyper::body::Frame::data(d))))
    }
}

/// Connects every request to one address, whatever its URI names (a service name whose
/// connects the mesh redirects).
#[derive(Clone)]
struct FixedTarget(Arc<String>);

impl tower_service::Service<hyper::Uri> for FixedTarget {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let target = Arc::clone(&self.0);
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(target.as_str()).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// What `load` sends and asks for besides the request line.
struct LoadBody {
    body_bytes: usize,
    reply_bytes: Option<usize>,
}

fn load(
    url: &str,
    rate: u32,
    seconds: u32,
    http2: bool,
    host: Option<String>,
    options: LoadBody,
) -> anyhow::Result<()> {
    use http_body_util::{BodyExt, Full};
    let payload = Bytes::from(vec![b'x'; options.body_bytes]);
    let method = if options.body_bytes > 0 {
        hyper::Method::POST
    } else {
        hyper::Method::GET
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let uri: hyper::Uri = match &host {
        // The URL names where to connect; with --host the request names the service.
        Some(host) if http2 => {
            let parts = url.parse::<hyper::Uri>()?;
            format!("http://{host}{}", parts.path()).parse()?
        }
        _ => url.parse()?,
    };
    let connect_to: hyper::Uri = url.parse()?;
    runtime.block_on(async move {
        let target = connect_to
            .authority()
            .context("URL without host")?
            .to_string();
        let connector = FixedTarget(Arc::new(target));
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(http2)
                .build::<_, Full<Bytes>>(connector);
        let total = u64::from(rate) * u64::from(seconds);
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
        let start = tokio::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..total {
            let scheduled = start + interval.mul_f64(i as f64);
            tokio::time::sleep_until(scheduled).await;
            let mut request = hyper::Request::builder()
                .method(method.clone())
                .uri(uri.clone())
                .body(Full::new(payload.clone()))?;
            if let Some(length) = options.reply_bytes {
                request
                    .headers_mut()
                    .insert("x-meshtb-reply-bytes", length.into());
            }
            if let (Some(host), false) = (&host, http2) {
                request
                    .headers_mut()
                    .insert(hyper::header::HOST, host.parse()?);
            }
            let client = client.clone();
            // Latency counts from the send, which happens on schedule (to the timer's 1 ms
            // resolution) however many requests are outstanding.
            let sent = tokio::time::Instant::now();
            tasks.spawn(async move {
                let ok = match client.request(request).await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        ok && response.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                (ok, sent.elapsed())
            });
        }
        let mut latencies = Vec::with_capacity(total as usize);
        let mut errors = 0u64;
        while let Some(result) = tasks.join_next().await {
            let (ok, latency) = result?;
            if ok {
                latencies.push(latency);
            } else {
                errors += 1;
            }
        }
        latencies.sort();
        let percentile = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        println!(
            "requests={} errors={errors} p50_us={:.0} p99_us={:.0} max_us={:.0}",
            latencies.len(),
            percentile(0.50),
            percentile(0.99),
            percentile(1.0)
        );
        Ok(())
    })
}

fn grpc_server(port: u16, name: String) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        tonic::transport::Server::builder()
            .add_service(service)
            .serve(SocketAddr::from(([0, 0, 0, 0], port)))
            .await
            .context("gRPC server")
    })
}

fn grpc_check(
    to: SocketAddr,
    authority: &str,
    service: String,
    metadata: &[String],
) -> anyhow::Result<()> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{to}"))?
            .origin(format!("http://{authority}").parse()?)
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .context("connect")?;
        let mut request = tonic::Request::new(HealthCheckRequest { service });
        for pair in metadata {
            let (key, value) = pair
                .split_once('=')
                .context("metadata is written key=value")?;
            request.metadata_mut().insert(
                tonic::metadata::MetadataKey::from_bytes(key.as_bytes())?,
                value.parse()?,
            );
        }
        match HealthClient::new(channel).check(request).await {
            Ok(response) => println!("status={}", response.into_inner().status().as_str_name()),
            Err(status) => println!("error={:?} message={}", status.code(), status.message()),
        }
        Ok(())
    })
}

fn sink(port: u16, reply_bytes: usize) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            // Readiness probes connect and hang up without reading: not worth a line.
            match sink_one(stream, reply_bytes) {
                Err(error)
                    if matches!(
                        error.kind(),
                        ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
                    ) => {}
                Err(error) => eprintln!("sink: {error}"),
                Ok(()) => {}
            }
        });
    }
    Ok(())
}

fn sink_one(mut stream: TcpStream, reply_bytes: usize) -> std::io::Result<()> {
    let peer = stream.peer_addr()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n;
    }
    writeln!(
        stream,
        "sha256={} bytes={total} peer={peer}",
        hex(&hasher.finalize())
    )?;
    write_pattern(&mut stream, SERVER_SEED, reply_bytes)?;
    Ok(())
}

fn write_pattern(stream: &mut TcpStream, seed: u64, len: usize) -> std::io::Result<()> {
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        pattern.fill(&mut buf[..n]);
        stream.write_all(&buf[..n])?;
        left -= n;
    }
    Ok(())
}

fn send(to: SocketAddr, bytes: usize) -> anyhow::Result<()> {
    let stream = TcpStream::connect(to).with_context(|| format!("connect {to}"))?;
    // getpeername: with the redirect in place this must still be `to`.
    println!("peer={}", stream.peer_addr()?);
    println!("local={}", stream.local_addr()?);
    let mut writer = stream.try_clone()?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        write_pattern(&mut writer, CLIENT_SEED, bytes)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0usize;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        received += n;
    }
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
    println!("server={}", line.trim());
    println!("received_bytes={received}");
    println!("received_sha256={}", hex(&hasher.finalize()));
    Ok(())
}

fn probe(to: SocketAddr) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut stream = match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
        Ok(stream) => stream,
        Err(error) => {
            println!(
                "connect={:?} elapsed_ms={}",
                error.kind(),
                started.elapsed().as_millis()
            );
            return Ok(());
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let outcome = match stream.read(&mut [0u8; 1]) {
        Ok(0) => "eof".to_owned(),
        Ok(_) => "data".to_owned(),
        Err(error) => format!("{:?}", error.kind()),
    };
    println!(
        "connect=ok read={outcome} elapsed_ms={}",
        started.elapsed().as_millis()
    );
    Ok(())
}
