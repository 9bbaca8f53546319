//! Priced routes: path patterns in axum's syntax, each for a set of methods.
//!
//! - A pattern is a path whose segments may be parameters: `/items/{id}` matches one segment,
//!   `/files/{*path}` the rest of the path (one segment or more). A parameter may follow a
//!   literal prefix in its segment (`/img-{name}`), not precede a suffix. Literal braces are
//!   written `{{` and `}}`.
//! - A route takes a list of methods; none means every method. A route for `GET` prices `HEAD`
//!   too (a `HEAD` is answered like a `GET`, without the body).
//! - **The most specific route wins**: among the routes for the request's method, segment by
//!   segment from the left, a literal segment beats a `{param}`, which beats a `{*catch_all}`
//!   (the rule of axum's router, `matchit`). Two routes that could match the same paths
//!   equally (`/items/{id}` and `/items/{name}` for the same method) are a configuration error.
//! - Matching is on [`match_key`] of the (canonical) path: case-insensitive, ignoring
//!   `;parameters` and a trailing slash, so that an upstream that reads a path loosely cannot
//!   serve a priced route for free.
//! - A path or method no route matches passes through unpriced.

use std::collections::HashMap;

use http::Method;

use crate::{Error, Price, path::match_key};

/// The node's own path prefixes: answered by the node, never proxied, never priced.
pub const RESERVED_PREFIXES: [&str; 5] = ["/admin", "/x402", "/healthz", "/metrics", "/facilitator"];

/// Whether a (canonical) path is under one of [`RESERVED_PREFIXES`], in any case.
pub fn is_reserved(path: &str) -> bool {
    let key = match_key(path);
    RESERVED_PREFIXES
        .iter()
        .any(|p| key.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
}

/// The methods a route without a method list is priced for, besides extension methods.
const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];

/// A table of priced routes.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    prices: Vec<Price>,
    patterns: Vec<String>,
    by_method: HashMap<Method, matchit::Router<usize>>,
    /// Routes for every method, consulted for extension methods.
    any: matchit::Router<usize>,
}

/// The route a request matched.
#[derive(Clone, Copy, Debug)]
pub struct Matched<'a> {
    /// Its price.
    pub price: &'a Price,
    /// Its pattern, as configured.
    pub pattern: &'a str,
}

impl Routes {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no route is priced.
    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }

    /// Prices `pattern` for `methods` (none: every method).
    pub fn add<M: AsRef<str>>(&mut self, pattern: &str, methods: &[M], price: Price) -> Result<(), Error> {
        if !pattern.starts_with('/') {
            return Err(Error::RoutePattern {
                pattern: pattern.into(),
                reason: "must start with '/'".into(),
            });
        }
        if is_reserved(pattern) {
            return Err(Error::RouteReserved(pattern.into()));
        }
        let key = match_key(pattern);
        if key != pattern.to_ascii_lowercase().trim_end_matches('/') && key != "/" {
            return Err(Error::RoutePattern {
                pattern: pattern.into(),
                reason: "must be a canonical path: no empty segments or ';'".into(),
            });
        }
        let mut explicit = Vec::new();
        for m in methods {
            let upper = m.as_ref().to_ascii_uppercase();
            let method = Method::from_bytes(upper.as_bytes())
                .map_err(|_| Error::RouteMethod { pattern: pattern.into(), method: m.as_ref().into() })?;
            if !explicit.contains(&method) {
                explicit.push(method);
            }
        }
        let index = self.prices.len();
        let mut table = self.clone();
        let conflict = |e: matchit::InsertError, method: &str| match e {
            matchit::InsertError::Conflict { with } => {
                Error::RouteConflict { pattern: pattern.into(), with, method: method.into() }
            }
            other => Error::RoutePattern { pattern: pattern.into(), reason: other.to_string() },
        };
        if explicit.is_empty() {
            for method in METHODS {
                table
                    .by_method
                    .entry(method.clone())
                    .or_default()
                    .insert(&key, index)
                    .map_err(|e| conflict(e, method.as_str()))?;
            }
            table.any.insert(&key, index).map_err(|e| conflict(e, "every method"))?;
        } else {
            for method in &explicit {
                table
                    .by_method
                    .entry(method.clone())
                    .or_default()
                    .insert(&key, index)
                    .map_err(|e| conflict(e, method.as_str()))?;
            }
            if explicit.contains(&Method::GET) && !explicit.contains(&Method::HEAD) {
                // A HEAD route of the same pattern, priced on its own, keeps its price.
                let head = table.by_method.entry(Method::HEAD).or_default();
                match head.insert(&key, index) {
                    Ok(()) | Err(matchit::InsertError::Conflict { .. }) => {}
                    Err(e) => return Err(conflict(e, "HEAD")),
                }
            }
        }
        table.prices.push(price);
        table.patterns.push(pattern.into());
        *self = table;
        Ok(())
    }

    /// The route priced for `method` on `path` (canonical), if any: the most specific one.
    pub fn find(&self, method: &Method, path: &str) -> Option<Matched<'_>> {
        if self.prices.is_empty() {
            return None;
        }
        let key = match_key(path);
        let upper;
        let method = if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
            upper = Method::from_bytes(method.as_str().to_ascii_uppercase().as_bytes()).ok()?;
            &upper
        } else {
            method
        };
        let router = self.by_method.get(method).unwrap_or(&self.any);
        let index = *router.at(&key).ok()?.value;
        Some(Matched { price: &self.prices[index], pattern: &self.patterns[index] })
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::U256;

    use super::*;

    fn price(n: u64) -> Price {
        Price::exact(U256::from(n))
    }

    fn table(routes: &[(&str, &[&str], u64)]) -> Result<Routes, Error> {
        let mut t = Routes::new();
        for (pattern, methods, p) in routes {
            t.add(pattern, methods, price(*p))?;
        }
        Ok(t)
    }

    fn cost(t: &Routes, method: &str, path: &str) -> Option<u64> {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        t.find(&method, path).map(|m| m.price.amount.to::<u64>())
    }

    #[test]
    fn the_most_specific_route_wins() {
        let t = table(&[
            ("/items/{id}", &["GET"], 1),
            ("/items/special", &["GET"], 2),
            ("/items/{id}/reviews", &[], 3),
            ("/files/{*path}", &["GET", "PUT"], 4),
            ("/files/readme", &[], 5),
            ("/{*rest}", &["DELETE"], 6),
            ("/v1/chat/completions", &["POST"], 7),
            ("/img-{name}", &["GET"], 8),
        ])
        .unwrap();
        for (method, path, expected) in [
            ("GET", "/items/42", Some(1)),
            ("HEAD", "/items/42", Some(1)),
            ("GET", "/items/special", Some(2)),
            ("GET", "/items/42/reviews", Some(3)),
            ("PATCH", "/items/42/reviews", Some(3)),
            ("POST", "/items/42", None),
            ("GET", "/items", None),
            ("GET", "/files/a/b/c.txt", Some(4)),
            ("PUT", "/files/a", Some(4)),
            ("GET", "/files/readme", Some(5)),
            ("DELETE", "/files/readme", Some(5)),
            ("DELETE", "/anything/at/all", Some(6)),
            ("GET", "/anything", None),
            ("POST", "/v1/chat/completions", Some(7)),
            ("GET", "/v1/chat/completions", None),
            ("GET", "/img-cat", Some(8)),
            ("GET", "/img/cat", None),
            // Loose matching: case, parameters, trailing slash.
            ("GET", "/ITEMS/Special/", Some(2)),
            ("GET", "/items;x=1/42;y", Some(1)),
            ("post", "/v1/chat/completions", Some(7)),
            // An extension method is priced only by routes for every method.
            ("PURGE", "/items/42/reviews", Some(3)),
            ("PURGE", "/items/42", None),
        ] {
            assert_eq!(cost(&t, method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn every_method_by_default_and_explicit_head_kept() {
        let t = table(&[("/weather", &[], 1), ("/doc", &["HEAD"], 2), ("/doc", &["GET"], 3)]).unwrap();
        for m in ["GET", "POST", "OPTIONS", "BREW"] {
            assert_eq!(cost(&t, m, "/weather"), Some(1), "{m}");
        }
        assert_eq!((cost(&t, "HEAD", "/doc"), cost(&t, "GET", "/doc")), (Some(2), Some(3)));
        assert!(Routes::new().find(&Method::GET, "/weather").is_none());
    }

    #[test]
    fn bad_tables_are_refused() {
        for (name, routes) in [
            ("overlap", vec![("/items/{id}", vec!["GET"]), ("/items/{name}", vec!["GET"])]),
            ("same route twice", vec![("/a", vec![]), ("/A", vec!["POST"])]),
            ("reserved", vec![("/admin/x", vec![])]),
            ("reserved case", vec![("/Metrics", vec![])]),
            ("reserved exact", vec![("/x402", vec![])]),
            ("relative", vec![("weather", vec![])]),
            ("bad param", vec![("/a/{", vec![])]),
            ("catch-all not last", vec![("/a/{*p}/b", vec![])]),
            ("bad method", vec![("/a", vec!["G ET"])]),
            ("not canonical", vec![("/a//b", vec![])]),
            ("params", vec![("/a;b", vec![])]),
        ] {
            let mut t = Routes::new();
            let result = routes.iter().try_for_each(|(p, m)| t.add(p, m, price(1)));
            assert!(result.is_err(), "{name}");
        }
        // Distinct methods do not overlap; a root catch-all may cover the node's paths (they
        // are answered before the paywall).
        table(&[("/items/{id}", &["GET"], 1), ("/items/{name}", &["POST"], 2), ("/{*all}", &[], 3)]).unwrap();
        assert!(is_reserved("/admin") && is_reserved("/ADMIN/x") && is_reserved("/x402/open"));
        assert!(!is_reserved("/administrator") && !is_reserved("/x4020"));
    }
}
