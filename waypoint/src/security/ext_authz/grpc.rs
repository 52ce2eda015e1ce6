//! The gRPC flavour of a check (`envoyExtAuthzGrpc`): Envoy's `Authorization/Check` call
//! made from a client request, and what its answer means. The messages are [`super::pb`]'s.

use super::*;

impl ExtAuthz {
    pub(super) fn grpc_check(
        &self,
        parts: &Parts,
        ctx: &CheckContext<'_>,
        body: Option<&CheckBody>,
    ) -> Request<Bytes> {
        use prost::Message as _;
        let mut headers = std::collections::HashMap::new();
        for name in parts.headers.keys() {
            if name == PARTIAL_BODY {
                continue;
            }
            let joined: Vec<&str> = parts
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            headers.insert(name.as_str().to_string(), joined.join(","));
        }
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let host = authority(parts)
            .and_then(|v| v.to_str().ok().map(str::to_string))
            .unwrap_or_default();
        headers.insert(":method".into(), parts.method.as_str().into());
        headers.insert(":path".into(), path.clone());
        headers.insert(":authority".into(), host.clone());
        headers.insert(":scheme".into(), "http".into());
        let (text, raw) = match body {
            Some(b) => {
                headers.insert(PARTIAL_BODY.into(), b.partial.to_string());
                let raw = self.body.is_some_and(|c| c.raw);
                // A handle on what was read, no copy until the check is encoded.
                let bytes = b.bytes.clone();
                if raw {
                    (Bytes::new(), bytes)
                } else {
                    (bytes, Bytes::new())
                }
            }
            None => (Bytes::new(), Bytes::new()),
        };
        let size = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(-1);
        let peer = |addr: Option<SocketAddr>, principal: Option<&str>| pb::Peer {
            address: addr.map(|a| pb::Address {
                socket_address: Some(pb::SocketAddress {
                    protocol: 0,
                    address: a.ip().to_string(),
                    port_value: u32::from(a.port()),
                }),
            }),
            principal: principal.map_or_else(String::new, |p| format!("spiffe://{p}")),
            ..Default::default()
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let check = pb::CheckRequest {
            attributes: Some(pb::AttributeContext {
                source: Some(peer(ctx.source, ctx.principal)),
                destination: Some(peer(ctx.destination, None)),
                request: Some(pb::Request {
                    time: Some(prost_types::Timestamp {
                        seconds: now.as_secs() as i64,
                        nanos: now.subsec_nanos() as i32,
                    }),
                    http: Some(pb::HttpRequest {
                        id: parts
                            .headers
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string(),
                        method: parts.method.as_str().to_string(),
                        headers,
                        path,
                        host,
                        scheme: "http".into(),
                        size,
                        protocol: match parts.version {
                            http::Version::HTTP_2 => "HTTP/2",
                            http::Version::HTTP_10 => "HTTP/1.0",
                            _ => "HTTP/1.1",
                        }
                        .into(),
                        body: text,
                        raw_body: raw,
                    }),
                }),
                context_extensions: Default::default(),
            }),
        };
        let mut body = Vec::with_capacity(5 + check.encoded_len());
        body.push(0);
        body.extend_from_slice(&(check.encoded_len() as u32).to_be_bytes());
        check.encode(&mut body).expect("a Vec grows");
        let mut req = Request::new(Bytes::from(body));
        *req.method_mut() = http::Method::POST;
        *req.version_mut() = http::Version::HTTP_2;
        // HTTP/2 takes `:scheme` and `:authority` from the URI.
        *req.uri_mut() = http::Uri::builder()
            .scheme("http")
            .authority(format!("{}:{}", self.host, self.port))
            .path_and_query(pb::CHECK_PATH)
            .build()
            .unwrap_or_else(|_| http::Uri::from_static(pb::CHECK_PATH));
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        req
    }
}

/// What a gRPC provider's answer means: `OK` allows as its `ok_response` says, another
/// status denies as its `denied_response` says (403 without one), and a failed call is an
/// error.
pub(super) fn grpc_answer(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    trailers: Option<&HeaderMap>,
) -> Decision {
    use prost::Message as _;
    if status != StatusCode::OK {
        return Decision::Error(format!("the provider answered {status}"));
    }
    // The call's status: the trailers', or the head's for a trailers-only answer.
    let grpc_status = trailers
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok());
    if grpc_status != Some("0") {
        return Decision::Error(format!(
            "the Check call ended with grpc-status {}",
            grpc_status.unwrap_or("(none)")
        ));
    }
    let message = match body {
        [0, a, b, c, d, rest @ ..]
            if u32::from_be_bytes([*a, *b, *c, *d]) as usize == rest.len() =>
        {
            rest
        }
        [1, ..] => return Decision::Error("a compressed CheckResponse".into()),
        _ => return Decision::Error("not one gRPC message in the answer".into()),
    };
    let resp = match pb::CheckResponse::decode(message) {
        Ok(r) => r,
        Err(e) => return Decision::Error(format!("the CheckResponse does not decode: {e}")),
    };
    // Envoy's reading of a header option: the deprecated `append` when set, else the
    // action (an unknown one sets).
    let pairs = |opts: &[pb::HeaderValueOption]| -> Vec<(Edit, HeaderName, HeaderValue)> {
        opts.iter()
            .filter_map(|o| {
                let h = o.header.as_ref()?;
                let name = HeaderName::from_bytes(h.key.as_bytes()).ok()?;
                let raw = if h.value.is_empty() {
                    &h.raw_value
                } else {
                    h.value.as_bytes()
                };
                let value = HeaderValue::from_bytes(raw).ok()?;
                (!framing(&name)).then_some(())?;
                let edit = match (&o.append, o.append_action) {
                    (Some(a), _) if a.value => Edit::Add,
                    (Some(_), _) => Edit::Set,
                    (None, 0) => Edit::Add,
                    (None, 1) => Edit::AddIfAbsent,
                    (None, 3) => Edit::OverwriteIfExists,
                    (None, _) => Edit::Set,
                };
                Some((edit, name, value))
            })
            .collect()
    };
    if resp.status.as_ref().map_or(0, |s| s.code) == 0 {
        let ok = resp.ok_response.unwrap_or_default();
        return Decision::Allow(Allowed {
            query_set: ok
                .query_parameters_to_set
                .iter()
                .map(|q| (q.key.clone(), q.value.clone()))
                .filter(|(k, _)| !k.is_empty())
                .collect(),
            query_remove: ok.query_parameters_to_remove.clone(),
            edits: pairs(&ok.headers),
            remove: ok
                .headers_to_remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .filter(|n| !framing(n))
                .collect(),
            downstream: pairs(&ok.response_headers_to_add)
                .into_iter()
                .map(|(_, n, v)| (n, v))
                .collect(),
        });
    }
    // A status the client can be given (an informational one cannot end a request).
    let status_of = |s: Option<pb::HttpStatus>| {
        s.and_then(|s| u16::try_from(s.code).ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
            .filter(|c| c.as_u16() >= 200)
    };
    let headers_of = |opts: &[pb::HeaderValueOption]| {
        let mut out = HeaderMap::new();
        for (_, n, v) in pairs(opts) {
            out.append(n, v);
        }
        out
    };
    // Not OK: a denial, unless the provider says it failed (`error_response`).
    if let Some(failed) = resp.error_response {
        return Decision::Failed {
            status: status_of(failed.status),
            headers: headers_of(&failed.headers),
            body: Bytes::from(failed.body),
        };
    }
    let denied = resp.denied_response.unwrap_or_default();
    Decision::Deny {
        status: status_of(denied.status).unwrap_or(StatusCode::FORBIDDEN),
        headers: headers_of(&denied.headers),
        body: Bytes::from(denied.body),
    }
}
