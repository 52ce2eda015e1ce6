//! JWT validation (Istio's RequestAuthentication, Envoy's jwt_authn): the compiled rules,
//! finding a token where a rule looks for it, verifying it with that rule's keys, and the
//! claims the authorization policies and the header edits read.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use http::request::Parts;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;

use super::jwks::{self, Keys, RemoteJwks};
use super::*;

/// A JWT rule, ready to verify.
pub(super) struct JwtRule {
    pub(super) issuer: String,
    audiences: Vec<String>,
    keys: KeySet,
    from_headers: Vec<(HeaderName, String)>,
    pub(super) claims_to_headers: Vec<(HeaderName, Vec<String>)>,
    forward_original_token: bool,
}

/// A rule's keys: given in the config, or fetched (and replaced) by the waypoint.
enum KeySet {
    Fixed(Arc<Keys>),
    Remote(Arc<RemoteJwks>),
}

impl std::fmt::Debug for JwtRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = match &self.keys {
            KeySet::Fixed(k) => format!("{} keys", k.len()),
            KeySet::Remote(r) => format!("from {}", r.source.url()),
        };
        f.debug_struct("JwtRule")
            .field("issuer", &self.issuer)
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

/// How long a fetch of a rule's keys may take without `timeout`: Istio's default.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// What a validated token says.
#[derive(Debug, Clone)]
pub(super) struct Auth {
    pub(super) principal: Option<String>,
    pub(super) claims: serde_json::Map<String, Value>,
}

pub(super) fn compile_jwt(
    r: &JwtRuleSpec,
    at: &str,
    read: &dyn Fn(&str) -> std::io::Result<String>,
    remote: &JwksRegistry,
) -> Result<JwtRule, RouteError> {
    if r.issuer.is_empty() {
        return Err(err(format!("{at}.issuer"), "must not be empty"));
    }
    let timeout = match &r.timeout {
        None => FETCH_TIMEOUT,
        Some(t) => crate::route::duration(t, &format!("{at}.timeout"))?,
    };
    let fixed = |text: &str, field: &str| {
        jwks::parse(text)
            .map(|k| KeySet::Fixed(Arc::new(k)))
            .map_err(|(path, why)| {
                let path = if path.is_empty() {
                    format!("{at}.{field}")
                } else {
                    format!("{at}.{field}.{path}")
                };
                err(path, why)
            })
    };
    let keys = match (&r.jwks, &r.jwks_file, &r.jwks_uri) {
        (Some(j), None, None) => fixed(j, "jwks")?,
        (None, Some(f), None) => {
            let text = read(f).map_err(|e| err(format!("{at}.jwksFile"), format!("{f}: {e}")))?;
            fixed(&text, "jwksFile")?
        }
        (None, None, Some(u)) => {
            web_url(u).map_err(|why| err(format!("{at}.jwksUri"), why))?;
            KeySet::Remote(remote.slot(jwks::Source::Uri(u.clone()), timeout))
        }
        (None, None, None) => {
            // istiod's rule: no keys given, so the issuer's OpenID discovery names them.
            web_url(&r.issuer).map_err(|_| {
                err(
                    at,
                    format!(
                        "give the keys (jwks, jwksFile or jwksUri): issuer {:?} is not an http(s) URL, so they cannot be discovered",
                        r.issuer
                    ),
                )
            })?;
            KeySet::Remote(remote.slot(
                jwks::Source::Discovery {
                    issuer: r.issuer.clone(),
                },
                timeout,
            ))
        }
        _ => {
            return Err(err(
                at,
                "give the keys as one of jwks (inline JSON), jwksFile or jwksUri, not several",
            ));
        }
    };
    let mut from_headers = Vec::new();
    for (i, h) in r.from_headers.iter().enumerate() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            err(
                format!("{at}.fromHeaders[{i}].name"),
                format!("{:?} is not a header name", h.name),
            )
        })?;
        from_headers.push((name, h.prefix.clone().unwrap_or_default()));
    }
    if from_headers.is_empty() {
        from_headers.push((http::header::AUTHORIZATION, "Bearer ".to_string()));
    }
    let mut claims_to_headers = Vec::new();
    for (i, c) in r.output_claim_to_headers.iter().enumerate() {
        let name = HeaderName::from_bytes(c.header.as_bytes()).map_err(|_| {
            err(
                format!("{at}.outputClaimToHeaders[{i}].header"),
                format!("{:?} is not a header name", c.header),
            )
        })?;
        claims_to_headers.push((name, c.claim.split('.').map(str::to_string).collect()));
    }
    Ok(JwtRule {
        issuer: r.issuer.clone(),
        audiences: r.audiences.clone(),
        keys,
        from_headers,
        claims_to_headers,
        forward_original_token: r.forward_original_token,
    })
}

/// An absolute `http` or `https` URL with a host.
fn web_url(u: &str) -> Result<(), String> {
    let uri: http::Uri = u.parse().map_err(|e| format!("{u:?} is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "{u:?}: only http:// and https:// URLs can be fetched"
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{u:?} has no host"));
    }
    Ok(())
}

/// The algorithm a key without `alg` is used with (the JOSE defaults Envoy assumes).
pub(super) fn default_alg(k: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    match &k.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        _ => None,
    }
}

/// Finds the token, verifies it with the rule of its issuer, applies the rule's header
/// edits. `Ok(None)`: no token.
pub(super) fn authenticate(
    rules: &[Arc<JwtRule>],
    parts: &mut Parts,
) -> Result<Option<Auth>, Refusal> {
    if rules.is_empty() {
        return Ok(None);
    }
    // Headers the rules fill from claims are the waypoint's to write: a client's own copy
    // never passes, token or not.
    for r in rules {
        for (name, _) in &r.claims_to_headers {
            parts.headers.remove(name);
        }
    }
    let mut found = None;
    'rules: for r in rules {
        for (name, prefix) in &r.from_headers {
            if let Some(v) = parts.headers.get(name).and_then(|v| v.to_str().ok())
                && let Some(token) = v.strip_prefix(prefix.as_str())
            {
                found = Some((token.trim().to_string(), name.clone(), prefix.clone()));
                break 'rules;
            }
        }
    }
    let Some((token, header, prefix)) = found else {
        return Ok(None);
    };
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Refusal::Unauthenticated("Jwt verification fails"));
    }
    // The issuer picks the rule; its signature is checked with that rule's keys only.
    let unverified: serde_json::Map<String, Value> = jsonwebtoken::dangerous::insecure_decode(
        &token,
    )
    .map(|d| d.claims)
    .map_err(|_| {
        Refusal::Unauthenticated(
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        )
    })?;
    let iss = unverified.get("iss").and_then(Value::as_str).unwrap_or("");
    // A token is verified only by a rule that looks for tokens where this one was found
    // (Envoy binds providers to their locations).
    let Some(rule) = rules.iter().find(|r| {
        r.issuer == iss
            && r.from_headers
                .iter()
                .any(|(n, p)| *n == header && *p == prefix)
    }) else {
        return Err(Refusal::Unauthenticated("Jwt issuer is not configured"));
    };
    let head = jsonwebtoken::decode_header(&token)
        .map_err(|_| Refusal::Unauthenticated("Jwt verification fails"))?;
    let keys = match &rule.keys {
        KeySet::Fixed(k) => k.clone(),
        KeySet::Remote(r) => r
            .keys()
            .ok_or(Refusal::Unauthenticated("Jwks remote fetch is failed"))?,
    };
    let mut verified = None;
    for (kid, key, alg) in &keys.0 {
        if *alg != head.alg || (head.kid.is_some() && kid.is_some() && *kid != head.kid) {
            continue;
        }
        let mut v = Validation::new(*alg);
        v.leeway = JWT_LEEWAY_SECS;
        v.set_issuer(&[&rule.issuer]);
        v.validate_nbf = true;
        v.required_spec_claims.clear();
        v.validate_aud = false;
        match jsonwebtoken::decode::<serde_json::Map<String, Value>>(&token, key, &v) {
            Ok(d) => {
                verified = Some(d.claims);
                break;
            }
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    return Err(Refusal::Unauthenticated("Jwt is expired"));
                }
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                    return Err(Refusal::Unauthenticated("Jwt not yet valid"));
                }
                _ => {}
            },
        }
    }
    let Some(claims) = verified else {
        return Err(Refusal::Unauthenticated("Jwt verification fails"));
    };
    if !rule.audiences.is_empty() {
        let aud = string_list(claims.get("aud"));
        if !aud.iter().any(|a| rule.audiences.iter().any(|w| w == a)) {
            return Err(Refusal::Unauthenticated("Audiences in Jwt are not allowed"));
        }
    }
    // Istio's request principal is `iss/sub`; a token without a subject has none.
    let principal = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(|sub| format!("{}/{}", rule.issuer, sub));
    let auth = Auth { principal, claims };
    if !rule.forward_original_token {
        parts.headers.remove(&header);
    }
    for (name, path) in &rule.claims_to_headers {
        let v = claim(&auth.claims, path).and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        });
        match v.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
            Some(v) => {
                parts.headers.insert(name.clone(), v);
            }
            None => {
                // A client must not be able to set the header itself.
                parts.headers.remove(name);
            }
        }
    }
    Ok(Some(auth))
}

pub(super) fn claim<'a>(
    claims: &'a serde_json::Map<String, Value>,
    path: &[String],
) -> Option<&'a Value> {
    let mut v = claims.get(path.first()?)?;
    for p in &path[1..] {
        v = v.get(p)?;
    }
    Some(v)
}

/// A claim as strings: a string, a list of strings, or a space-separated string (`scope`).
pub(super) fn string_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        Some(Value::Number(n)) => vec![n.to_string()],
        Some(Value::Bool(b)) => vec![b.to_string()],
        _ => Vec::new(),
    }
}
