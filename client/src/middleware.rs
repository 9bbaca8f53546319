//! [`PaymentMiddleware`]: plugs a [`Client`] into a `reqwest-middleware` stack.

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::{Client, Error};

/// A `reqwest-middleware` middleware that pays 402 `channel` payments with a [`Client`].
///
/// ```no_run
/// # async fn demo(client: x402_client::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(x402_client::PaymentMiddleware::new(client))
///     .build();
/// let body = http.get("http://127.0.0.1:8402/weather").send().await?.text().await?;
/// # Ok(()) }
/// ```
///
/// Errors of the payment (a limit, a refused payment) come back as
/// `reqwest_middleware::Error::Middleware` wrapping an [`Error`]; downcast to inspect them.
#[derive(Clone, Debug)]
pub struct PaymentMiddleware {
    client: Client,
}

impl PaymentMiddleware {
    /// A middleware paying with `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

#[async_trait::async_trait]
impl Middleware for PaymentMiddleware {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let base = extensions.clone();
        let result = self
            .client
            .execute_with(req, |r| {
                let next = next.clone();
                let mut extensions = base.clone();
                Box::pin(async move {
                    next.run(r, &mut extensions).await.map_err(|e| match e {
                        reqwest_middleware::Error::Reqwest(e) => Error::Http(e),
                        reqwest_middleware::Error::Middleware(e) => Error::Middleware(e),
                    })
                })
            })
            .await;
        result.map_err(|e| match e {
            Error::Http(e) => reqwest_middleware::Error::Reqwest(e),
            Error::Middleware(e) => reqwest_middleware::Error::Middleware(e),
            other => reqwest_middleware::Error::Middleware(other.into()),
        })
    }
}
