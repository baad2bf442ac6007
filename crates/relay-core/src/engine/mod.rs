//! The relay engine: resolve the preset, try its items in order, pick a channel per
//! attempt, call the upstream with deadlines, retry and fail over while nothing has
//! reached the client, hold a stream's head until its first content event, and settle.

mod body;
mod client;
mod http1;
mod pool;
mod settle;
mod upstream_io;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, header};
use http_body_util::{BodyExt, Limited};
use rand::Rng;
use tokio::time::timeout_at;

pub use body::RelayBody;
pub use client::UpstreamClient;
pub use pool::UpstreamBody;

use self::body::{StartedStream, StreamState};
use self::settle::Settlement;
use crate::adapter::{AdapterRegistry, DecodedResponse, UpstreamCall};
use crate::config::{ConfigError, RelayConfig, RetryPolicy};
use crate::dialect::InboundRequest;
use crate::error::{Disposition, ErrorKind, RelayError, Side};
use crate::hooks::{
    AttemptFailure, ErrorAction, HookSession, PluginFactory, Reply, RequestAction, RequestPatch,
};
use crate::select::{Channel, ChannelSet, Preset, Route, RoutingTable};
use crate::sse::SseParser;
use crate::usage::{NullSink, UsageRecord, UsageSink};

/// Upstream error bodies are read up to this size for classification.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Events held before the first content event, at most (a guard against an upstream
/// that streams metadata forever).
const HELD_LIMIT: usize = 1024 * 1024;

/// One request for the engine.
#[derive(Debug)]
pub struct RelayRequest {
    /// The decoded client request.
    pub inbound: InboundRequest,
    /// Unique id (also the settlement record's id).
    pub request_id: String,
    /// The caller's key id, if known.
    pub key_id: Option<String>,
    /// The caller's channel group, if it has one: only channels listing it in `groups`
    /// serve the request (a key's group in the gateway).
    pub group: Option<String>,
    /// When the request arrived (latency and deadlines count from here).
    pub received_at: Instant,
}

impl RelayRequest {
    /// A request that arrived now.
    pub fn new(inbound: InboundRequest, request_id: impl Into<String>) -> Self {
        RelayRequest {
            inbound,
            request_id: request_id.into(),
            key_id: None,
            group: None,
            received_at: Instant::now(),
        }
    }
}

/// Builds a [`Relay`].
pub struct RelayBuilder {
    config: RelayConfig,
    adapters: AdapterRegistry,
    sink: Arc<dyn UsageSink>,
    plugins: Option<Arc<dyn PluginFactory>>,
}

impl RelayBuilder {
    /// Use these adapters (providers).
    pub fn adapters(mut self, adapters: AdapterRegistry) -> Self {
        self.adapters = adapters;
        self
    }

    /// Send settlement records here (default: dropped).
    pub fn usage_sink(mut self, sink: Arc<dyn UsageSink>) -> Self {
        self.sink = sink;
        self
    }

    /// Run preset items' plugins through this factory (without one, `plugins` lists are
    /// ignored).
    pub fn plugins(mut self, factory: Arc<dyn PluginFactory>) -> Self {
        self.plugins = Some(factory);
        self
    }

    /// Validate the config and build the engine. Must be called inside a Tokio runtime
    /// only when requests are made, not to build.
    pub fn build(self) -> Result<Relay, BuildError> {
        let table = RoutingTable::build_with_plugins(
            &self.config,
            &self.adapters,
            None,
            self.plugins.as_deref(),
        )?;
        let client = UpstreamClient::new(&self.config.upstream)?;
        Ok(Relay {
            inner: Arc::new(Inner {
                table: ArcSwap::from_pointee(table),
                adapters: self.adapters,
                client,
                sink: self.sink,
                plugins: self.plugins,
                max_response_bytes: self.config.upstream.max_response_bytes,
            }),
        })
    }
}

/// Why a [`Relay`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP client could not be set up.
    #[error(transparent)]
    Client(#[from] RelayError),
}

/// The relay engine. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    table: ArcSwap<RoutingTable>,
    adapters: AdapterRegistry,
    client: UpstreamClient,
    sink: Arc<dyn UsageSink>,
    plugins: Option<Arc<dyn PluginFactory>>,
    max_response_bytes: usize,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("adapters", &self.inner.adapters)
            .finish()
    }
}

/// A successful attempt, before the response is built.
enum Answer {
    Full(DecodedResponse),
    Stream(StartedStream),
    /// A plugin answered; no upstream was called.
    Reply(Reply),
}

/// What a successful [`Relay::run`] hands to [`Relay::respond`].
struct Success {
    answer: Answer,
    channel: Option<Arc<Channel>>,
    idle: Duration,
    deadline: Instant,
    session: Option<Box<dyn HookSession>>,
}

impl Relay {
    /// Start building an engine for `config`.
    pub fn builder(config: RelayConfig) -> RelayBuilder {
        RelayBuilder {
            config,
            adapters: AdapterRegistry::new(),
            sink: Arc::new(NullSink),
            plugins: None,
        }
    }

    /// Swap in a new config. A bad one is refused and the current one keeps serving;
    /// channel health carries over by id.
    pub fn reload(&self, config: &RelayConfig) -> Result<(), ConfigError> {
        let current = self.inner.table.load();
        let table = RoutingTable::build_with_plugins(
            config,
            &self.inner.adapters,
            Some(&current),
            self.inner.plugins.as_deref(),
        )?;
        self.inner.table.store(Arc::new(table));
        Ok(())
    }

    /// The routing table in force.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.inner.table.load_full()
    }

    /// The registered adapters.
    pub fn adapters(&self) -> &AdapterRegistry {
        &self.inner.adapters
    }

    /// Relay one request. On `Err` nothing was sent to the client yet: render the error in
    /// the client's dialect. Either way exactly one usage record is (or will be, when a
    /// stream ends or is dropped) handed to the sink.
    pub async fn handle(&self, req: RelayRequest) -> Result<http::Response<RelayBody>, RelayError> {
        let inbound = &req.inbound;
        let mut record = UsageRecord::new(
            req.request_id.clone(),
            inbound.model.clone(),
            inbound.dialect,
            inbound.op,
        );
        record.key_id = req.key_id.clone();
        record.stream = inbound.stream;
        let mut settlement = Settlement::new(
            record,
            self.inner.sink.clone(),
            req.received_at,
            inbound.estimated_prompt_tokens(),
        );
        let table = self.inner.table.load_full();
        let result = match table.resolve(&inbound.model) {
            None => Err(RelayError::model_not_found(&inbound.model)),
            Some(preset) => {
                self.run(
                    &table,
                    preset,
                    inbound,
                    &req.request_id,
                    req.group.as_deref(),
                    &mut settlement,
                )
                .await
            }
        };
        match result {
            Ok(success) => Ok(self.respond(success, settlement, &table)),
            Err(err) => {
                settlement.fail(&err);
                Err(err)
            }
        }
    }

    fn respond(
        &self,
        success: Success,
        mut settlement: Settlement,
        table: &RoutingTable,
    ) -> http::Response<RelayBody> {
        let Success {
            answer,
            channel,
            idle,
            deadline,
            session,
        } = success;
        match (answer, channel) {
            (Answer::Reply(reply), _) => {
                settlement.finish(crate::usage::Outcome::Ok, None);
                let mut resp = http::Response::new(RelayBody::full(reply.body));
                *resp.status_mut() = reply.status;
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, reply.content_type);
                resp
            }
            (Answer::Full(decoded), _) => {
                settlement.usage_seen = decoded.usage;
                settlement.finish(crate::usage::Outcome::Ok, None);
                let mut resp = http::Response::new(RelayBody::full(decoded.body));
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, decoded.content_type);
                resp
            }
            (Answer::Stream(started), Some(channel)) => {
                let filter = session.and_then(|s| s.into_stream_filter());
                let state = StreamState::new(
                    started,
                    idle,
                    deadline.into(),
                    settlement,
                    channel,
                    table.board.clone(),
                    filter,
                );
                let mut resp = http::Response::new(RelayBody::stream(state));
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                h.insert("x-accel-buffering", HeaderValue::from_static("no"));
                resp
            }
            (Answer::Stream(_), None) => {
                // Unreachable: a stream always comes from a channel.
                let err = RelayError::internal("a stream without a channel");
                settlement.fail(&err);
                http::Response::new(RelayBody::empty())
            }
        }
    }

    /// Items in order, attempts inside each, until one succeeds or nothing is left.
    async fn run(
        &self,
        table: &RoutingTable,
        preset: &Preset,
        inbound: &InboundRequest,
        request_id: &str,
        group: Option<&str>,
        settlement: &mut Settlement,
    ) -> Result<Success, RelayError> {
        let started = settlement.started();
        // Channels that must not be used again in this request (from the start: those
        // outside the caller's group), and ones that failed in a way a later retry may fix.
        let mut dead = match group {
            None => ChannelSet::default(),
            Some(group) => outside_group(preset, group, &inbound.model)?,
        };
        let mut tried = ChannelSet::default();
        let mut last_err: Option<RelayError> = None;
        let mut attempts = 0u32;

        for (index, route) in preset.items.iter().enumerate() {
            let deadline = started + route.timeouts.total();
            let mut round = 0u32;
            let mut item_attempts = 0u32;
            // Plugins (only when the item has any): before-hooks once per item; their
            // body changes make an owned copy of the request, header changes apply to
            // every attempt.
            let mut session = route.hooks.as_ref().map(|h| h.start(request_id, index));
            let mut patched: Option<InboundRequest> = None;
            let mut patch: Option<RequestPatch> = None;
            if let Some(s) = session.as_mut() {
                match s.before_request(inbound)? {
                    RequestAction::Proceed => {}
                    RequestAction::Modify(p) => {
                        if p.touches_body() {
                            let mut owned = inbound.clone();
                            p.apply_body(&mut owned);
                            patched = Some(owned);
                        }
                        patch = Some(p);
                    }
                    RequestAction::Respond(reply) => {
                        if let Some(r) = settlement.record_mut() {
                            r.item = Some(index);
                        }
                        return Ok(Success {
                            answer: Answer::Reply(reply),
                            channel: None,
                            idle: route.timeouts.idle(),
                            deadline,
                            session,
                        });
                    }
                }
            }
            let request = patched.as_ref().unwrap_or(inbound);
            while item_attempts < route.retry.max_attempts {
                let now = Instant::now();
                if now >= deadline {
                    last_err = Some(total_timeout());
                    break;
                }
                let mut skip = dead.clone();
                merge(&mut skip, &tried, route);
                let channel = match route.select(&table.board, &skip) {
                    Some(c) => c.clone(),
                    None => {
                        // Everything here failed already. Retry one that failed
                        // retryably, after the upstream's Retry-After or a backoff.
                        let Some(err) = last_err.as_ref().filter(|e| e.is_retryable()) else {
                            break;
                        };
                        let Some(wait) = backoff(&route.retry, round, err) else {
                            break;
                        };
                        let Some(c) = route.select(&table.board, &dead) else {
                            break;
                        };
                        let c = c.clone();
                        if now + wait >= deadline {
                            break;
                        }
                        tokio::time::sleep(wait).await;
                        round += 1;
                        c
                    }
                };
                item_attempts += 1;
                attempts += 1;
                let model = channel.config.map_model(&route.model);
                if let Some(r) = settlement.record_mut() {
                    r.attempts = attempts;
                    r.item = Some(index);
                    r.channel = Some(channel.id().to_owned());
                    r.upstream_model = Some(model.to_owned());
                    r.upstream_dialect = Some(channel.adapter.dialect().as_str());
                }
                match self
                    .attempt(route, &channel, model, request, deadline, patch.as_ref())
                    .await
                {
                    Ok(mut answer) => {
                        if let (Some(s), Answer::Full(decoded)) = (session.as_mut(), &mut answer) {
                            s.after_response(request, decoded)?;
                        }
                        return Ok(Success {
                            answer,
                            channel: Some(channel),
                            idle: route.timeouts.idle(),
                            deadline,
                            session,
                        });
                    }
                    Err(err) => {
                        tracing::warn!(
                            channel = %channel.id(),
                            item = index,
                            attempt = attempts,
                            error = %err,
                            "upstream attempt failed"
                        );
                        let action = match session.as_mut() {
                            None => ErrorAction::Default,
                            Some(s) => s.on_error(&AttemptFailure {
                                error: &err,
                                attempt: attempts,
                                item: index,
                            }),
                        };
                        let err = match action {
                            ErrorAction::Default => err,
                            ErrorAction::Retry(after) => err
                                .with_disposition(Disposition::Retry)
                                .with_retry_after(Some(after)),
                            ErrorAction::Fallback => {
                                tried.insert(&channel);
                                last_err = Some(err);
                                break;
                            }
                            ErrorAction::Abort => {
                                return Err(err.with_disposition(Disposition::Fatal));
                            }
                        };
                        match err.disposition() {
                            Disposition::Fatal => return Err(err),
                            Disposition::Failover => {
                                if err.side() == Side::Upstream {
                                    channel.health.on_failure(&table.board);
                                }
                                dead.insert(&channel);
                            }
                            Disposition::Retry => {
                                if err.side() == Side::Upstream {
                                    channel.health.on_failure(&table.board);
                                }
                                tried.insert(&channel);
                            }
                        }
                        last_err = Some(err);
                    }
                }
            }
        }
        Err(match last_err {
            Some(err) if attempts > 1 => {
                let msg = format!(
                    "all {attempts} upstream attempts failed; last: {}",
                    err.message()
                );
                err.with_message(msg)
            }
            Some(err) => err,
            None => RelayError::new(
                ErrorKind::NoChannel,
                Side::Internal,
                format!("no enabled channel can serve `{}` right now", preset.name),
            ),
        })
    }

    /// One upstream call: send, check the head, read or begin the stream.
    async fn attempt(
        &self,
        route: &Route,
        channel: &Channel,
        model: &str,
        inbound: &InboundRequest,
        deadline: Instant,
        patch: Option<&RequestPatch>,
    ) -> Result<Answer, RelayError> {
        let call = UpstreamCall {
            request: inbound,
            channel: &channel.config,
            base_url: &channel.base_url,
            api_key: channel.next_key(),
            model,
        };
        let adapter = &channel.adapter;
        // A request this channel cannot express (a feature its dialect lacks) never left:
        // another channel or item may take it. If none can, the client gets this reason.
        let mut request = adapter.build_request(&call).map_err(|e| {
            if e.disposition() == Disposition::Fatal {
                e.with_disposition(Disposition::Failover)
            } else {
                e
            }
        })?;
        if let Some(patch) = patch {
            patch.apply_headers(request.headers_mut());
        }
        let sent = Instant::now();
        let first_byte = (sent + route.timeouts.first_byte()).min(deadline);
        let response = match timeout_at(first_byte.into(), self.inner.client.send(request)).await {
            Ok(r) => r?,
            Err(_) if first_byte >= deadline => return Err(total_timeout()),
            Err(_) => {
                return Err(RelayError::new(
                    ErrorKind::FirstByteTimeout,
                    Side::Upstream,
                    format!(
                        "no response head from `{}` within {} ms",
                        channel.id(),
                        route.timeouts.first_byte_ms
                    ),
                ));
            }
        };
        let (parts, body) = response.into_parts();
        if !parts.status.is_success() {
            let limit = (Instant::now() + Duration::from_secs(5)).min(deadline);
            let bytes = read_capped(body, ERROR_BODY_LIMIT, limit)
                .await
                .unwrap_or_default();
            return Err(adapter
                .classify_error(parts.status, &parts.headers, &bytes)
                .with_upstream_body(bytes));
        }
        channel.health.on_success(sent.elapsed());

        if !inbound.stream {
            let bytes = read_capped(body, self.inner.max_response_bytes, deadline).await?;
            return adapter.decode_response(&call, bytes).map(Answer::Full);
        }

        let is_sse = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
        if !is_sse {
            let limit = (Instant::now() + Duration::from_secs(5)).min(deadline);
            let bytes = read_capped(body, ERROR_BODY_LIMIT, limit)
                .await
                .unwrap_or_default();
            return Err(RelayError::new(
                ErrorKind::UpstreamProtocol,
                Side::Upstream,
                format!(
                    "`{}` answered a stream request without an event stream: {}",
                    channel.id(),
                    String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                ),
            ));
        }
        self.hold_until_content(route, channel, &call, body, sent, deadline)
            .await
    }

    /// Read the stream until its first content event (or its end), holding every byte
    /// back, so a failure up to here can still fail over invisibly.
    async fn hold_until_content(
        &self,
        route: &Route,
        channel: &Channel,
        call: &UpstreamCall<'_>,
        mut body: UpstreamBody,
        sent: Instant,
        deadline: Instant,
    ) -> Result<Answer, RelayError> {
        let mut translator = channel.adapter.stream_translator(call)?;
        let mut parser = SseParser::new();
        let mut held = BytesMut::new();
        let first_token = (sent + route.timeouts.first_token()).min(deadline);
        loop {
            let wait_until = (Instant::now() + route.timeouts.idle()).min(first_token);
            let frame = match timeout_at(wait_until.into(), body.frame()).await {
                Err(_) if wait_until >= deadline => return Err(total_timeout()),
                Err(_) => {
                    return Err(RelayError::new(
                        ErrorKind::FirstTokenTimeout,
                        Side::Upstream,
                        format!(
                            "no content from `{}` within {} ms",
                            channel.id(),
                            route.timeouts.first_token_ms
                        ),
                    ));
                }
                Ok(None) => {
                    // Ended before any content: a clean end only if the translator agrees.
                    while let Some(event) = parser.finish().map_err(sse_error)? {
                        if translator.on_event(event, &mut held)?.done {
                            return Ok(Answer::Stream(StartedStream {
                                upstream: body,
                                parser,
                                translator,
                                held,
                                done: true,
                            }));
                        }
                    }
                    translator.on_eof(&mut held)?;
                    return Ok(Answer::Stream(StartedStream {
                        upstream: body,
                        parser,
                        translator,
                        held,
                        done: true,
                    }));
                }
                Ok(Some(Err(e))) => {
                    return Err(RelayError::new(
                        ErrorKind::UpstreamIo,
                        Side::Upstream,
                        format!(
                            "upstream stream failed before any content: {}",
                            client::source_chain(&e)
                        ),
                    ));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            parser.push_bytes(data);
            let mut content = false;
            while let Some(event) = parser.next_event().map_err(sse_error)? {
                let progress = translator.on_event(event, &mut held)?;
                if progress.done {
                    return Ok(Answer::Stream(StartedStream {
                        upstream: body,
                        parser,
                        translator,
                        held,
                        done: true,
                    }));
                }
                content |= progress.content;
            }
            if content {
                return Ok(Answer::Stream(StartedStream {
                    upstream: body,
                    parser,
                    translator,
                    held,
                    done: false,
                }));
            }
            if held.len() > HELD_LIMIT {
                return Err(RelayError::new(
                    ErrorKind::UpstreamProtocol,
                    Side::Upstream,
                    "the upstream stream sent over 1 MiB before any content",
                ));
            }
        }
    }
}

/// Add the channels of `tried` that belong to this route.
/// The preset's channels that do not list `group`; a clear 404 in the client's dialect when
/// no channel of the group is left (the model does not exist for this caller).
fn outside_group(preset: &Preset, group: &str, model: &str) -> Result<ChannelSet, RelayError> {
    let mut outside = ChannelSet::default();
    let mut any_inside = false;
    for route in &preset.items {
        for c in route.channels() {
            if c.config.groups.iter().any(|g| g == group) {
                any_inside = true;
            } else {
                outside.insert(c);
            }
        }
    }
    if any_inside {
        Ok(outside)
    } else {
        Err(RelayError::new(
            ErrorKind::ModelNotFound,
            Side::Client,
            format!(
                "The model `{model}` does not exist or you do not have access to it (no channel of your group `{group}` serves it)."
            ),
        )
        .with_code("model_not_found"))
    }
}

fn merge(skip: &mut ChannelSet, tried: &ChannelSet, route: &Route) {
    for c in route.channels() {
        if tried.contains(c) {
            skip.insert(c);
        }
    }
}

/// How long to wait before reusing a channel that failed with `err`: the upstream's
/// Retry-After if it is within the cap (`None`, meaning do not reuse, if it is over),
/// else exponential backoff with full jitter.
fn backoff(policy: &RetryPolicy, round: u32, err: &RelayError) -> Option<Duration> {
    if let Some(after) = err.retry_after() {
        return (after <= Duration::from_millis(policy.max_retry_after_ms)).then_some(after);
    }
    let ceiling = policy
        .backoff_base_ms
        .saturating_mul(1u64 << round.min(20))
        .min(policy.backoff_max_ms);
    let ms = if ceiling == 0 {
        0
    } else {
        rand::rng().random_range(ceiling / 2..=ceiling)
    };
    Some(Duration::from_millis(ms))
}

fn total_timeout() -> RelayError {
    RelayError::new(
        ErrorKind::TotalTimeout,
        Side::Upstream,
        "the request exceeded its total time limit",
    )
    .with_disposition(Disposition::Fatal)
}

fn sse_error(e: crate::sse::SseError) -> RelayError {
    RelayError::new(
        ErrorKind::UpstreamProtocol,
        Side::Upstream,
        format!("bad upstream event stream: {e}"),
    )
}

async fn read_capped(
    body: UpstreamBody,
    limit: usize,
    deadline: Instant,
) -> Result<Bytes, RelayError> {
    match timeout_at(deadline.into(), Limited::new(body, limit).collect()).await {
        Err(_) => Err(total_timeout()),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(RelayError::new(
                    ErrorKind::UpstreamProtocol,
                    Side::Upstream,
                    format!("the upstream response is larger than {limit} bytes"),
                ))
            } else {
                Err(RelayError::new(
                    ErrorKind::UpstreamIo,
                    Side::Upstream,
                    format!("reading the upstream response failed: {e}"),
                ))
            }
        }
    }
}
