//! The CORS headers of every answer, as tower-http's `CorsLayer` writes them for
//! our rules, with every header value built once at start-up.
//!
//! tower-http's layer joins its `vary` list into a new header value, fills a new
//! header map and clones its configuration (vectors of values) with each route's
//! service, for every request: about 6,000 instructions a create (bench/analysis.md,
//! "Admission, round eight"). Here a request costs a look at its method and
//! `Origin`, and the clone an `Arc`. The tests hold the answers equal to
//! tower-http's, header by header.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{Method, Request, Response};
use tower::{Layer, Service};

/// What a browser may do across origins, with every header value ready.
#[derive(Debug)]
struct Rules {
    /// `None`: any origin (`*`).
    origins: Option<Vec<HeaderValue>>,
    vary: HeaderValue,
    methods: HeaderValue,
    headers: HeaderValue,
    max_age: HeaderValue,
}

/// The layer: `origins` are the allowed origins (`*` among them: any).
#[derive(Debug, Clone)]
pub struct CorsLayer(Arc<Rules>);

impl CorsLayer {
    pub fn new(origins: &[String], methods: &[Method], headers: &[HeaderName], max_age: Duration) -> Self {
        let origins = if origins.iter().any(|o| o == "*") {
            None
        } else {
            // Validated at start-up (config::Settings::validate).
            Some(origins.iter().filter_map(|o| o.parse::<HeaderValue>().ok()).collect())
        };
        Self(Arc::new(Rules {
            origins,
            // tower-http's default `vary`: the request headers a preflight answer depends on.
            vary: HeaderValue::from_static("origin, access-control-request-method, access-control-request-headers"),
            methods: joined(methods.iter().map(Method::as_str)),
            headers: joined(headers.iter().map(HeaderName::as_str)),
            max_age: HeaderValue::from(max_age.as_secs()),
        }))
    }
}

/// Names joined by commas, without spaces, as tower-http lists them.
fn joined<'a>(names: impl Iterator<Item = &'a str>) -> HeaderValue {
    let list = names.collect::<Vec<_>>().join(",");
    // Method and header names are tokens, which header values may hold.
    HeaderValue::from_str(&list).unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl Rules {
    /// `access-control-allow-origin`: `*` for any origin, else the request's origin
    /// when it is one of the allowed, else none.
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match &self.origins {
            None => Some(HeaderValue::from_static("*")),
            Some(list) => origin.filter(|o| list.contains(o)).cloned(),
        }
    }
}

impl<S> Layer<S> for CorsLayer {
    type Service = Cors<S>;

    fn layer(&self, inner: S) -> Cors<S> {
        Cors {
            rules: Arc::clone(&self.0),
            inner,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Cors<S> {
    rules: Arc<Rules>,
    inner: S,
}

impl<S, B, R> Service<Request<B>> for Cors<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: Default,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = CorsAnswer<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let allow_origin = self.rules.allow_origin(request.headers().get(header::ORIGIN));
        // Every OPTIONS is answered here, as a preflight, without reaching a route.
        if request.method() == Method::OPTIONS {
            let mut response = Response::new(R::default());
            let headers = response.headers_mut();
            headers.insert(header::VARY, self.rules.vary.clone());
            headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.rules.methods.clone());
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, self.rules.headers.clone());
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, self.rules.max_age.clone());
            if let Some(origin) = allow_origin {
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            }
            return CorsAnswer {
                answer: None,
                preflight: Some(response),
                vary: None,
                allow_origin: None,
            };
        }
        CorsAnswer {
            answer: Some(self.inner.call(request)),
            preflight: None,
            vary: Some(self.rules.vary.clone()),
            allow_origin,
        }
    }
}

pin_project_lite::pin_project! {
    /// A preflight's answer, or the route's with the CORS headers added: a plain
    /// future, not a boxed one (this layer wraps every request).
    pub struct CorsAnswer<F, R> {
        #[pin]
        answer: Option<F>,
        preflight: Option<Response<R>>,
        vary: Option<HeaderValue>,
        allow_origin: Option<HeaderValue>,
    }
}

impl<F, R, E> Future for CorsAnswer<F, R>
where
    F: Future<Output = Result<Response<R>, E>>,
    R: Default,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(answer) = this.answer.as_pin_mut() else {
            // A preflight is answered on its first poll, and never polled again.
            return Poll::Ready(Ok(this.preflight.take().unwrap_or_default()));
        };
        let mut response = std::task::ready!(answer.poll(cx))?;
        let headers = response.headers_mut();
        // Added to a `vary` the route may have set; the origin replaces any.
        if let Some(vary) = this.vary.take() {
            headers.append(header::VARY, vary);
        }
        if let Some(origin) = this.allow_origin.take() {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;

    const METHODS: [Method; 5] = [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS];

    fn names() -> [HeaderName; 3] {
        [
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-admin-key"),
        ]
    }

    /// A route that answers with headers of its own, a `vary` among them.
    async fn route(_: Request<Body>) -> Result<Response<Body>, Infallible> {
        let mut response = Response::new(Body::from("{}"));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        response.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("https://set-by-the-route.example"),
        );
        Ok(response)
    }

    fn theirs(origins: &[String]) -> tower_http::cors::CorsLayer {
        use tower_http::cors::AllowOrigin;
        let allow_origin = if origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(origins.iter().filter_map(|o| o.parse::<HeaderValue>().ok()))
        };
        tower_http::cors::CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods(METHODS)
            .allow_headers(names())
            .max_age(Duration::from_secs(600))
    }

    /// Status, every header in order, and body.
    async fn answer<S>(service: S, request: Request<Body>) -> (u16, Vec<(String, String)>, Vec<u8>)
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    {
        let response = service.oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap()
            .to_vec();
        (status, headers, body)
    }

    #[tokio::test]
    async fn every_answer_carries_the_headers_tower_http_would_write() {
        let configs: [Vec<String>; 3] = [
            vec!["*".into()],
            vec!["https://app.example".into(), "https://other.example".into()],
            vec![],
        ];
        let requests: [(Method, Option<&str>, Option<&str>); 7] = [
            (Method::POST, None, None),
            (Method::POST, Some("https://app.example"), None),
            (Method::GET, Some("https://evil.example"), None),
            (Method::OPTIONS, Some("https://app.example"), Some("POST")),
            (Method::OPTIONS, Some("https://evil.example"), Some("POST")),
            (Method::OPTIONS, None, None),
            (Method::DELETE, Some("https://other.example"), None),
        ];
        for origins in &configs {
            let ours = CorsLayer::new(origins, &METHODS, &names(), Duration::from_secs(600));
            for (method, origin, preflight) in &requests {
                let request = || {
                    let mut request = Request::builder().method(method.clone()).uri("/sessions");
                    if let Some(origin) = origin {
                        request = request.header(header::ORIGIN, *origin);
                    }
                    if let Some(asked) = preflight {
                        request = request.header(header::ACCESS_CONTROL_REQUEST_METHOD, *asked);
                    }
                    request.body(Body::empty()).unwrap()
                };
                let expected = answer(theirs(origins).layer(tower::service_fn(route)), request()).await;
                let got = answer(ours.layer(tower::service_fn(route)), request()).await;
                assert_eq!(got, expected, "{origins:?} {method} {origin:?} {preflight:?}");
            }
        }
    }
}
