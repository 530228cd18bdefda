//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` over gRPC (tonic, with the
//! protos of the `envoy-types` crate): a request's descriptors through [`plan`] and
//! [`decide`], and the answer in Envoy's words.
//!
//! - Every status carries `current_limit`, `limit_remaining` (at most `u32::MAX`) and
//!   `duration_until_reset` (refused: until the request would fit; else until the bucket is
//!   full; whole seconds rounded up), from which Envoy writes its `x-ratelimit-*` headers; a refused request also gets
//!   `retry-after` (whole seconds, rounded up) in `response_headers_to_add`.
//! - A limiter that cannot be asked is the gRPC status `UNAVAILABLE`: Envoy then admits or
//!   refuses as its filter's `failure_mode_deny` says. A request without a domain or without
//!   descriptors is `INVALID_ARGUMENT`, as the reference service answers it, and so is one
//!   with more limited descriptors than one all-or-nothing call may charge (64).

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit as PbUnit, Code as PbCode, DescriptorStatus, RateLimit as PbRateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::{value::Kind, Duration as PbDuration, ListValue, Struct, Value};
use tonic::{Request, Response, Status as GrpcStatus};

use super::config::{RlsConfig, Unit};
use super::decide::{decide, Code, Decision, Status};
use super::plan::{plan, Descriptor, MAX_DESCRIPTORS, MAX_ENTRIES};
use crate::admission::Admission;
use crate::limiter::RateLimiter;
use crate::metrics::metrics;

pub use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;

/// The service: the configuration and the admission part every call goes through.
pub struct Rls<L> {
    config: Arc<RlsConfig>,
    admission: Arc<Admission<L>>,
}

impl<L: RateLimiter> Rls<L> {
    pub fn new(config: Arc<RlsConfig>, admission: Admission<L>) -> Self {
        Rls { config, admission: Arc::new(admission) }
    }

    /// The service as a tonic server, to add to a `tonic::transport::Server`.
    pub fn into_server(self) -> RateLimitServiceServer<Self> {
        RateLimitServiceServer::new(self)
    }
}

fn unit_from_pb(unit: i32) -> Option<Unit> {
    Some(match PbUnit::try_from(unit).ok()? {
        PbUnit::Second => Unit::Second,
        PbUnit::Minute => Unit::Minute,
        PbUnit::Hour => Unit::Hour,
        PbUnit::Day => Unit::Day,
        PbUnit::Week => Unit::Week,
        PbUnit::Month => Unit::Month,
        PbUnit::Year => Unit::Year,
        PbUnit::Unknown => return None,
    })
}

fn unit_to_pb(unit: Unit) -> PbUnit {
    match unit {
        Unit::Second => PbUnit::Second,
        Unit::Minute => PbUnit::Minute,
        Unit::Hour => PbUnit::Hour,
        Unit::Day => PbUnit::Day,
        Unit::Week => PbUnit::Week,
        Unit::Month => PbUnit::Month,
        Unit::Year => PbUnit::Year,
    }
}

fn descriptor(d: &RateLimitDescriptor) -> Descriptor {
    Descriptor {
        entries: d.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect(),
        hits_addend: d.hits_addend.as_ref().map(|h| h.value),
        negative: d.is_negative_hits,
        limit_override: d
            .limit
            .as_ref()
            .and_then(|l| unit_from_pb(l.unit).map(|unit| (u64::from(l.requests_per_unit), unit))),
    }
}

fn code(code: Code) -> i32 {
    match code {
        Code::Ok => PbCode::Ok as i32,
        Code::OverLimit => PbCode::OverLimit as i32,
    }
}

/// Whole seconds, rounded up: Envoy's `x-ratelimit-reset` shows only the seconds, and a
/// client that waits what it says must not come back early.
fn duration(ms: u64) -> PbDuration {
    PbDuration { seconds: i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX), nanos: 0 }
}

fn status(s: &Status) -> DescriptorStatus {
    DescriptorStatus {
        code: code(s.code),
        current_limit: s.current_limit.as_ref().map(|l| PbRateLimit {
            name: l.name.clone().unwrap_or_default(),
            requests_per_unit: u32::try_from(l.requests_per_unit).unwrap_or(u32::MAX),
            unit: unit_to_pb(l.unit) as i32,
        }),
        limit_remaining: u32::try_from(s.remaining).unwrap_or(u32::MAX),
        duration_until_reset: s.current_limit.as_ref().map(|_| duration(s.until_reset_ms)),
        ..DescriptorStatus::default()
    }
}

/// Where the answer's dynamic metadata puts what the service adds for Envoy's filters (Envoy
/// files it under `envoy.filters.http.ratelimit`).
pub const METADATA_NAMESPACE: &str = "ml_api_rate_limiter";

/// The field of [`METADATA_NAMESPACE`] with the hits each descriptor was charged, in the
/// request's order: a filter settling an LLM answer gives back or adds to what was really
/// charged (nothing, when the service was not reached and Envoy let the request through).
pub const HITS_CHARGED: &str = "hits_charged";

fn number(n: u64) -> Value {
    // Hits are at most 1e9 (Envoy's bound on hits_addend) plus summed duplicates: exact in an f64.
    Value { kind: Some(Kind::NumberValue(n as f64)) }
}

fn metadata(decision: &Decision) -> Struct {
    let charged = ListValue { values: decision.hits_charged.iter().map(|&n| number(n)).collect() };
    let ours = Struct { fields: [(HITS_CHARGED.to_string(), Value { kind: Some(Kind::ListValue(charged)) })].into() };
    Struct { fields: [(METADATA_NAMESPACE.to_string(), Value { kind: Some(Kind::StructValue(ours)) })].into() }
}

/// The answer Envoy reads.
pub fn response(decision: &Decision) -> RateLimitResponse {
    let mut response = RateLimitResponse {
        overall_code: code(decision.overall),
        statuses: decision.statuses.iter().map(status).collect(),
        dynamic_metadata: Some(metadata(decision)),
        ..RateLimitResponse::default()
    };
    if decision.overall == Code::OverLimit {
        if let Some(ms) = decision.retry_after_ms {
            response.response_headers_to_add.push(HeaderValue {
                key: "retry-after".into(),
                value: ms.div_ceil(1000).max(1).to_string(),
                ..HeaderValue::default()
            });
        }
    }
    response
}

#[tonic::async_trait]
impl<L: RateLimiter> RateLimitService for Rls<L> {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, GrpcStatus> {
        let started = std::time::Instant::now();
        let request = request.into_inner();
        // A domain of the configuration names its series; any other is "other" (a label
        // value never comes from a request unchecked).
        let domain = if self.config.has_domain(&request.domain) { request.domain.as_str() } else { "other" };
        let answer = self.answer(&request).await;
        let code = match &answer {
            Ok(response) if response.overall_code == PbCode::OverLimit as i32 => "over_limit",
            Ok(_) => "ok",
            Err(status) if status.code() == tonic::Code::Unavailable => "unavailable",
            Err(status) if status.code() == tonic::Code::InvalidArgument => "invalid_argument",
            Err(_) => "internal",
        };
        metrics().envoy_request(domain, code, started.elapsed());
        answer.map(Response::new)
    }
}

impl<L: RateLimiter> Rls<L> {
    async fn answer(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, GrpcStatus> {
        if request.domain.is_empty() {
            return Err(GrpcStatus::invalid_argument("rate limit domain must not be empty"));
        }
        if request.descriptors.is_empty() {
            return Err(GrpcStatus::invalid_argument("rate limit descriptor list must not be empty"));
        }
        // Bounded before anything is planned: the work per request stays small whatever is sent.
        if request.descriptors.len() > MAX_DESCRIPTORS {
            return Err(GrpcStatus::invalid_argument(format!(
                "more than {MAX_DESCRIPTORS} descriptors in one request"
            )));
        }
        if request.descriptors.iter().any(|d| d.entries.len() > MAX_ENTRIES) {
            return Err(GrpcStatus::invalid_argument(format!("a descriptor with more than {MAX_ENTRIES} entries")));
        }
        let descriptors: Vec<Descriptor> = request.descriptors.iter().map(descriptor).collect();
        let steps = plan(&self.config, &request.domain, &descriptors, request.hits_addend);
        // Decided in a task of its own: when Envoy gives up waiting (its `timeout`) and drops
        // this call, the decision still runs to its end, so a charge made is never left
        // without the shadow buckets, refunds and forced charges of the same request.
        let (admission, domain) = (self.admission.clone(), request.domain.clone());
        let decided = tokio::spawn(async move { decide(&admission, &domain, &steps).await });
        match decided.await {
            Ok(Ok(decision)) => Ok(response(&decision)),
            Ok(Err(e)) if e.is_outage() => Err(GrpcStatus::unavailable(e.to_string())),
            Ok(Err(e)) => Err(GrpcStatus::internal(e.to_string())),
            Err(e) => Err(GrpcStatus::internal(format!("the decision did not finish: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;

    use super::*;
    use crate::config::DenyCacheSettings;
    use crate::limiter::memory::MemoryLimiter;

    const CONFIG: &str = "\
domain: api
descriptors:
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 10, name: per-tenant}
  - key: user
    rate_limit: {unit: second, requests_per_unit: 1}
";

    fn d(key: &str, value: &str) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: vec![Entry { key: key.into(), value: value.into() }],
            ..RateLimitDescriptor::default()
        }
    }

    /// The service on a real gRPC listener, and a client of it.
    async fn serve(limiter: MemoryLimiter) -> RateLimitServiceClient<tonic::transport::Channel> {
        let config = Arc::new(RlsConfig::parse([("api.yaml", CONFIG)]).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admission = Admission::new(limiter, DenyCacheSettings { enabled: false, max_entries: 1 });
        let server = Rls::new(config, admission).into_server();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        RateLimitServiceClient::connect(format!("http://{addr}")).await.unwrap()
    }

    fn ask(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest { domain: "api".into(), descriptors, hits_addend: 0 }
    }

    #[tokio::test]
    async fn should_rate_limit_answers_in_envoys_words_over_grpc() {
        let limiter = MemoryLimiter::new();
        let mut client = serve(limiter.clone()).await;
        let both = || vec![d("tenant", "t"), d("user", "u")];
        let ok = client.should_rate_limit(ask(both())).await.unwrap().into_inner();
        assert_eq!(ok.overall_code, PbCode::Ok as i32);
        let tenant = &ok.statuses[0];
        let limit = tenant.current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.unit, limit.name.as_str()),
            (10, PbUnit::Minute as i32, "per-tenant")
        );
        assert_eq!(tenant.limit_remaining, 9);
        assert_eq!(tenant.duration_until_reset, Some(PbDuration { seconds: 6, nanos: 0 }), "one token back in 6 s");
        assert!(ok.response_headers_to_add.is_empty());

        let refused = client.should_rate_limit(ask(both())).await.unwrap().into_inner();
        assert_eq!(refused.overall_code, PbCode::OverLimit as i32);
        assert_eq!(refused.statuses[0].code, PbCode::Ok as i32);
        assert_eq!(refused.statuses[1].code, PbCode::OverLimit as i32);
        assert_eq!(refused.statuses[1].duration_until_reset, Some(PbDuration { seconds: 1, nanos: 0 }));
        let retry: Vec<_> =
            refused.response_headers_to_add.iter().map(|h| (h.key.as_str(), h.value.as_str())).collect();
        assert_eq!(retry, [("retry-after", "1")]);
        let again = client.should_rate_limit(ask(vec![d("tenant", "t")])).await.unwrap().into_inner();
        assert_eq!(again.statuses[0].limit_remaining, 8, "the refused request charged the tenant nothing");

        let unknown = client.should_rate_limit(ask(vec![d("other", "x")])).await.unwrap().into_inner();
        assert_eq!((unknown.overall_code, unknown.statuses[0].current_limit.clone()), (PbCode::Ok as i32, None));
    }

    #[tokio::test]
    async fn an_unreachable_limiter_is_unavailable_and_a_bad_request_invalid() {
        let limiter = MemoryLimiter::new();
        let mut client = serve(limiter.clone()).await;
        limiter.set_down(true);
        let down = client.should_rate_limit(ask(vec![d("tenant", "t")])).await.unwrap_err();
        assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
        let no_domain = RateLimitRequest { domain: String::new(), ..ask(vec![d("tenant", "t")]) };
        assert_eq!(client.should_rate_limit(no_domain).await.unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(client.should_rate_limit(ask(vec![])).await.unwrap_err().code(), tonic::Code::InvalidArgument);
        limiter.set_down(false);
        let many = (0..=MAX_DESCRIPTORS).map(|i| d("tenant", &i.to_string())).collect();
        let too_many = client.should_rate_limit(ask(many)).await.unwrap_err();
        assert_eq!(too_many.code(), tonic::Code::InvalidArgument, "{too_many:?}");
        let mut long = d("tenant", "t");
        long.entries = (0..=MAX_ENTRIES).map(|i| Entry { key: format!("k{i}"), value: "v".into() }).collect();
        assert_eq!(client.should_rate_limit(ask(vec![long])).await.unwrap_err().code(), tonic::Code::InvalidArgument);
        let most = (0..MAX_DESCRIPTORS).map(|i| d("tenant", &i.to_string())).collect();
        let fits = client.should_rate_limit(ask(most)).await.unwrap().into_inner();
        assert_eq!(fits.overall_code, PbCode::Ok as i32, "{MAX_DESCRIPTORS} buckets: one call");
        assert_eq!(limiter.checks(), 1);
    }

    #[tokio::test]
    async fn the_hits_charged_per_descriptor_come_back_as_dynamic_metadata() {
        let limiter = MemoryLimiter::new();
        let mut client = serve(limiter).await;
        let mut tokens = d("tenant", "t");
        tokens.hits_addend = Some(envoy_types::pb::google::protobuf::UInt64Value { value: 4 });
        let answer = client.should_rate_limit(ask(vec![d("other", "x"), tokens])).await.unwrap().into_inner();
        let metadata = answer.dynamic_metadata.unwrap();
        let Some(Kind::StructValue(ours)) = &metadata.fields[METADATA_NAMESPACE].kind else { panic!("{metadata:?}") };
        let Some(Kind::ListValue(charged)) = &ours.fields[HITS_CHARGED].kind else { panic!("{ours:?}") };
        let charged: Vec<_> = charged.values.iter().map(|v| v.kind.clone()).collect();
        assert_eq!(charged, [Some(Kind::NumberValue(0.0)), Some(Kind::NumberValue(4.0))]);
    }
}
