//! The gateway's one canonical form of a request path, used both to match priced routes and as
//! the path forwarded to the upstream, so that no spelling of a priced path can reach the
//! upstream without matching its route.
//!
//! [`canonical`] does, in this order (RFC 3986 §6.2.2):
//! - percent-decodes the unreserved characters (`A-Z a-z 0-9 - . _ ~`) and upper-cases the hex
//!   digits of every other escape, which stays encoded;
//! - removes the dot segments `.` and `..` (§5.2.4; `..` never climbs above the root);
//! - collapses runs of slashes into one; a trailing slash is kept (`/dir/` and `/dir` are
//!   different resources to many servers, and dropping it would loop on their redirects).
//!
//! It refuses, rather than guess how the upstream would read it:
//! - a path that is not origin-form (`*`, or not starting with `/`);
//! - a backslash, raw or encoded (`%5C`): some servers read it as `/`;
//! - an encoded slash `%2F`: some servers decode it before routing, some after;
//! - an encoded `%` (`%25`): a double encoding, which a server decoding twice would read as
//!   another path;
//! - an encoded NUL or other control character (`%00`…`%1F`, `%7F`);
//! - an invalid escape (`%`, `%4`, `%GZ`), raw bytes outside printable ASCII, and escapes that
//!   decode to bytes that are not UTF-8;
//! - a dot segment spelled with escapes (`%2E%2E`) or with parameters (`..;x`): servers
//!   disagree on whether it is one.

/// Why a path was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PathError(&'static str);

impl PathError {
    /// The reason, for a 400's message.
    pub const fn reason(&self) -> &'static str {
        self.0
    }
}

const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// One segment decoded: its canonical text, and whether it is an honest dot segment.
enum Segment {
    Text(String),
    Dot,
    DotDot,
}

fn segment(raw: &str, decoded: &mut Vec<u8>) -> Result<Segment, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut escaped = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) =
                    (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
                else {
                    return Err(PathError("invalid percent-escape in the path"));
                };
                let v = hi * 16 + lo;
                match v {
                    b'/' => return Err(PathError("an encoded slash (%2F) in the path is ambiguous")),
                    b'\\' => return Err(PathError("an encoded backslash (%5C) in the path is ambiguous")),
                    b'%' => return Err(PathError("a double-encoded path (%25) is ambiguous")),
                    0..=0x1f | 0x7f => return Err(PathError("an encoded control character in the path")),
                    _ => {}
                }
                escaped = true;
                decoded.push(v);
                if is_unreserved(v) {
                    out.push(char::from(v));
                } else {
                    out.push('%');
                    out.push(char::from(bytes[i + 1]).to_ascii_uppercase());
                    out.push(char::from(bytes[i + 2]).to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(PathError("a backslash in the path is ambiguous")),
            0x21..=0x7e => {
                decoded.push(b);
                out.push(char::from(b));
            }
            _ => return Err(PathError("the path has a byte outside printable ASCII: percent-encode it")),
        }
        i += 1;
    }
    let core = out.split(';').next().unwrap_or_default();
    let dots = match core {
        "." => Some(Segment::Dot),
        ".." => Some(Segment::DotDot),
        _ => None,
    };
    match dots {
        Some(_) if escaped || core.len() != out.len() => {
            Err(PathError("a dot segment spelled with escapes or parameters is ambiguous"))
        }
        Some(dot) => Ok(dot),
        None => Ok(Segment::Text(out)),
    }
}

/// The canonical form of an origin-form request path (no query), or why it has none.
pub fn canonical(path: &str) -> Result<String, PathError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError("the request target must be a path starting with '/'"));
    };
    let mut decoded = Vec::with_capacity(path.len());
    let mut out: Vec<String> = Vec::new();
    // Whether the path ends in a directory (a trailing slash, or a final dot segment).
    let mut trailing = false;
    for raw in rest.split('/') {
        trailing = true;
        if raw.is_empty() {
            continue;
        }
        match segment(raw, &mut decoded)? {
            Segment::Dot => {}
            Segment::DotDot => {
                out.pop();
            }
            Segment::Text(s) => {
                out.push(s);
                trailing = false;
            }
        }
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(PathError("the path's percent-escapes do not decode to UTF-8"));
    }
    let mut canonical = String::with_capacity(path.len());
    for s in &out {
        canonical.push('/');
        canonical.push_str(s);
    }
    if trailing || out.is_empty() {
        canonical.push('/');
    }
    Ok(canonical)
}

/// The key a canonical path is matched by against priced routes: lower-cased (ASCII), each
/// segment's `;parameters` removed, empty segments and a trailing slash dropped. Looser than
/// any upstream's reading of a path, so that whatever an upstream serves as a priced route
/// (one that ignores case, or strips `;jsessionid`-style parameters, or a trailing slash) is
/// charged as that route.
pub fn match_key(path: &str) -> String {
    let mut key = String::with_capacity(path.len());
    for segment in path.split('/') {
        let core = segment.split(';').next().unwrap_or_default();
        if !core.is_empty() {
            key.push('/');
            key.extend(core.chars().map(|c| c.to_ascii_lowercase()));
        }
    }
    if key.is_empty() {
        key.push('/');
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        for (raw, expected) in [
            ("/", "/"),
            ("/weather", "/weather"),
            ("/weather/", "/weather/"),
            ("//weather", "/weather"),
            ("/a//b///c", "/a/b/c"),
            ("/./weather", "/weather"),
            ("/a/../weather", "/weather"),
            ("/../../weather", "/weather"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/..", "/"),
            ("/%77eather", "/weather"),
            ("/%57EATHER", "/WEATHER"),
            ("/w%65ather", "/weather"),
            ("/%7e%2d%5F%2e", "/~-_."),
            ("/a%3ab", "/a%3Ab"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a;b=c/d", "/a;b=c/d"),
            ("/a/...", "/a/..."),
            ("/.well-known/x", "/.well-known/x"),
            ("/a%20b", "/a%20b"),
        ] {
            assert_eq!(canonical(raw).as_deref(), Ok(expected), "{raw}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for raw in [
            "",
            "*",
            "weather",
            "/weather%2F",
            "/weather%2f..",
            "/a%5Cweather",
            "/a\\weather",
            "/%2577eather",
            "/%252e%252e/weather",
            "/weather%00",
            "/weather%0a",
            "/weather%7F",
            "/weather%",
            "/weather%4",
            "/weather%GZ",
            "/%2e%2e/weather",
            "/%2E/weather",
            "/.%2e/weather",
            "/a/..;/weather",
            "/a/.;x/weather",
            "/%FF",
            "/%C3",
            "/caf\u{e9}",
            "/a b",
        ] {
            assert!(canonical(raw).is_err(), "{raw:?} must be refused, got {:?}", canonical(raw));
        }
    }

    #[test]
    fn canonical_is_idempotent() {
        for raw in ["/a//b/./c/../d/", "/%77eather;x", "/caf%c3%a9/", "/..", "/a/."] {
            let once = canonical(raw).unwrap();
            assert_eq!(canonical(&once).unwrap(), once, "{raw}");
        }
    }

    #[test]
    fn match_keys() {
        for (path, key) in [
            ("/", "/"),
            ("/weather", "/weather"),
            ("/Weather/", "/weather"),
            ("/weather;jsessionid=1", "/weather"),
            ("/v1;x/chat;y/completions", "/v1/chat/completions"),
            ("/;x", "/"),
            ("/a/;/b", "/a/b"),
        ] {
            assert_eq!(match_key(path), key, "{path}");
        }
    }
}
