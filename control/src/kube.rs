//! Reading Kubernetes objects: list then watch, per resource, as a reflector. What a
//! waypoint needs to take its L7 config (HTTPRoutes, VirtualServices, DestinationRules,
//! AuthorizationPolicies, RequestAuthentications) from the cluster instead of a file.
//!
//! Owns: the API server's address, credentials (a bearer token file, re-read for every
//! request, since projected service account tokens rotate) and roots; `LIST` and
//! `WATCH` over HTTP/1.1 with the JSON event stream; the per-resource store of objects by
//! namespace and name; relisting when the server says the watch is too old (410) and
//! rewatching after errors, with backoff; an optional kind the server does not serve or the
//! credentials may not read, as one with no objects.
//!
//! Invariants: the store only changes as the server says (a failed list keeps what was
//! there); every request is bounded in time and bytes (a list by [`MAX_LIST_BYTES`], one
//! watch event by [`MAX_EVENT_BYTES`], a watch by the server's `timeoutSeconds` plus a
//! margin); text from the server enters errors and logs truncated.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use http::Uri;
use http_body_util::BodyExt;
use serde_json::Value;

use crate::grpc::RootCa;

/// Largest LIST answer read (a cluster's routes and policies, all namespaces).
pub const MAX_LIST_BYTES: usize = 64 * 1024 * 1024;

/// Largest single watch event (one object; etcd's own limit is 1.5 MiB).
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// How long the server keeps a watch open before it ends it and we start another.
const WATCH_SECONDS: u64 = 290;

/// A LIST must answer within this.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// Backoff after a failed list or watch: from 200 ms, doubling, at most 30 s.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How to reach the API server.
#[derive(Debug, Clone)]
pub struct KubeApi {
    /// `https://HOST:PORT` (or `http://` for a local test server).
    pub base: Uri,
    /// The bearer token's file, read for every request; `None`: no token.
    pub token: Option<PathBuf>,
    pub roots: RootCa,
}

/// One kind of object, by its API path (`/apis/GROUP/VERSION/PLURAL`, all namespaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// For messages: `httproutes.gateway.networking.k8s.io`.
    pub name: &'static str,
    pub path: &'static str,
    /// A kind the reader can do without: one the server does not serve (404, no CRD) or it
    /// may not read (403, a ClusterRole from before the kind was read) counts as none.
    /// Kinds that carry policy are not optional: never served without them.
    pub optional: bool,
}

/// Objects of one resource, by (namespace, name).
pub type Objects = BTreeMap<(String, String), Value>;

/// A resource's objects as last heard, and whether the first LIST has arrived.
#[derive(Debug, Default)]
pub struct Store {
    pub objects: Objects,
    pub synced: bool,
}

/// Told of each failed list or watch (the reflector goes on after a backoff).
pub type OnError = dyn Fn(&Resource, &KubeError) + Send + Sync;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeError {
    #[error("{0}")]
    Failed(String),
    /// 410 Gone: the watch's resourceVersion is too old; list again.
    #[error("the resource version is too old (410 Gone)")]
    Gone,
    /// 404 for the resource's path: the server does not serve the kind (its
    /// CustomResourceDefinition is not installed).
    #[error("{0}: the API server does not serve this kind (404); is its CRD installed?")]
    NotServed(String),
    /// 403: the credentials may not read the kind.
    #[error("{0} (the service account needs list and watch on this kind)")]
    Forbidden(String),
}

impl KubeApi {
    async fn get(
        &self,
        path_and_query: &str,
    ) -> Result<
        (
            http::Response<hyper::body::Incoming>,
            tokio::task::JoinHandle<()>,
        ),
        KubeError,
    > {
        let uri: Uri = format!(
            "{}{}",
            self.base.to_string().trim_end_matches('/'),
            path_and_query
        )
        .parse()
        .map_err(|e| KubeError::Failed(format!("{path_and_query}: not a URL: {e}")))?;
        let mut headers = Vec::new();
        if let Some(file) = &self.token {
            let token = std::fs::read_to_string(file).map_err(|e| {
                KubeError::Failed(format!("reading the token {}: {e}", file.display()))
            })?;
            headers.push((
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            ));
        }
        let (resp, conn) = crate::fetch::open(&uri, &self.roots, &headers)
            .await
            .map_err(KubeError::Failed)?;
        match resp.status().as_u16() {
            200 => Ok((resp, conn)),
            410 => {
                conn.abort();
                Err(KubeError::Gone)
            }
            404 => {
                conn.abort();
                Err(KubeError::NotServed(
                    path_and_query
                        .split('?')
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                ))
            }
            code => {
                // The API server's Status message says why (forbidden, not found).
                let body = tokio::time::timeout(
                    Duration::from_secs(2),
                    http_body_util::Limited::new(resp.into_body(), 4096).collect(),
                )
                .await;
                conn.abort();
                let why = match body {
                    Ok(Ok(b)) => serde_json::from_slice::<Value>(&b.to_bytes())
                        .ok()
                        .and_then(|v| v.get("message")?.as_str().map(String::from))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                let why = format!(
                    "GET {path_and_query}: {code} {}",
                    crate::error::peer_text(&why)
                );
                Err(if code == 403 {
                    KubeError::Forbidden(why)
                } else {
                    KubeError::Failed(why)
                })
            }
        }
    }

    /// Every object of `r` and the list's resourceVersion.
    pub async fn list(&self, r: &Resource) -> Result<(Objects, String), KubeError> {
        let read = async {
            let (resp, conn) = self.get(r.path).await?;
            let body = http_body_util::Limited::new(resp.into_body(), MAX_LIST_BYTES)
                .collect()
                .await
                .map_err(|e| KubeError::Failed(format!("reading the {} list: {e}", r.name)));
            conn.abort();
            let body = body?.to_bytes();
            let list: Value = serde_json::from_slice(&body)
                .map_err(|e| KubeError::Failed(format!("the {} list is not JSON: {e}", r.name)))?;
            let version = list
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let mut objects = Objects::new();
            for item in list
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(key) = key_of(item) {
                    objects.insert(key, item.clone());
                }
            }
            Ok((objects, version))
        };
        tokio::time::timeout(LIST_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| {
                Err(KubeError::Failed(format!(
                    "the {} list took longer than {LIST_TIMEOUT:?}",
                    r.name
                )))
            })
    }

    /// Watches `r` from `version`, applying each event to `store` and calling `changed`
    /// after each change. Returns the last resourceVersion seen when the server ends the
    /// watch, or an error (`Gone`: list again).
    pub async fn watch(
        &self,
        r: &Resource,
        mut version: String,
        store: &Mutex<Store>,
        changed: &(dyn Fn() + Send + Sync),
    ) -> Result<String, KubeError> {
        let query = format!(
            "{}?watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={version}",
            r.path
        );
        let watch = async {
            // The head comes at once from a live server; only the stream is long.
            let (resp, conn) = tokio::time::timeout(LIST_TIMEOUT, self.get(&query))
                .await
                .map_err(|_| {
                    KubeError::Failed(format!(
                        "the {} watch had no answer within {LIST_TIMEOUT:?}",
                        r.name
                    ))
                })??;
            let mut body = resp.into_body();
            let mut buf = BytesMut::new();
            let result = loop {
                let frame = match body.frame().await {
                    None => break Ok(()),
                    Some(Err(e)) => {
                        break Err(KubeError::Failed(format!("the {} watch: {e}", r.name)));
                    }
                    Some(Ok(f)) => f,
                };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                    let line = buf.split_to(nl + 1);
                    let line = &line[..nl];
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match apply(r, line, store, &mut version) {
                        Ok(true) => changed(),
                        Ok(false) => {}
                        Err(e) => {
                            conn.abort();
                            return Err(e);
                        }
                    }
                }
                if buf.len() > MAX_EVENT_BYTES {
                    break Err(KubeError::Failed(format!(
                        "a {} watch event is larger than {MAX_EVENT_BYTES} bytes",
                        r.name
                    )));
                }
            };
            conn.abort();
            result.map(|()| version.clone())
        };
        let deadline = Duration::from_secs(WATCH_SECONDS + 30);
        match tokio::time::timeout(deadline, watch).await {
            Ok(r) => r,
            // The server should have ended it; start another from what we saw.
            Err(_) => Ok(version),
        }
    }

    /// Keeps `store` in step with resource `r` until the task is dropped: list, watch,
    /// watch again from where the last one ended, list again when the server says the
    /// version is gone, back off after errors (reported to `failed`).
    ///
    /// An optional kind ([`Resource::optional`]) the server does not serve (404: its CRD is
    /// not installed) or the credentials may not read (403) has no objects: the store is
    /// synced and empty, `failed` hears of it once, and the list is tried again every
    /// [`BACKOFF_MAX`], so a CRD installed or a role granted later is picked up. For any
    /// other kind these are failures like the rest: the store keeps what it had, unsynced
    /// until a list succeeds (a waypoint never serves without its policies).
    pub async fn reflect(
        &self,
        r: Resource,
        store: Arc<Mutex<Store>>,
        changed: Arc<dyn Fn() + Send + Sync>,
        failed: Arc<OnError>,
    ) {
        let mut backoff = BACKOFF_MIN;
        let mut told_not_served = false;
        loop {
            let version = match self.list(&r).await {
                Ok((objects, version)) => {
                    {
                        let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
                        s.objects = objects;
                        s.synced = true;
                    }
                    changed();
                    backoff = BACKOFF_MIN;
                    told_not_served = false;
                    version
                }
                Err(e @ (KubeError::NotServed(_) | KubeError::Forbidden(_))) if r.optional => {
                    let was = {
                        let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
                        let was = (s.synced, s.objects.is_empty());
                        s.objects.clear();
                        s.synced = true;
                        was
                    };
                    if was != (true, true) {
                        changed();
                    }
                    if !told_not_served {
                        failed(&r, &e);
                        told_not_served = true;
                    }
                    tokio::time::sleep(BACKOFF_MAX).await;
                    continue;
                }
                Err(e) => {
                    failed(&r, &e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            let mut version = version;
            loop {
                match self.watch(&r, version.clone(), &store, &*changed).await {
                    Ok(v) => {
                        version = v;
                        backoff = BACKOFF_MIN;
                    }
                    Err(KubeError::Gone) => break,
                    Err(KubeError::NotServed(_) | KubeError::Forbidden(_)) if r.optional => break,
                    Err(e) => {
                        failed(&r, &e);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        }
    }
}

/// (namespace, name) of an object.
fn key_of(v: &Value) -> Option<(String, String)> {
    let m = v.get("metadata")?;
    Some((
        m.get("namespace")?.as_str()?.to_string(),
        m.get("name")?.as_str()?.to_string(),
    ))
}

/// One watch event applied to `store`; `Ok(true)` when the objects changed.
fn apply(
    r: &Resource,
    line: &[u8],
    store: &Mutex<Store>,
    version: &mut String,
) -> Result<bool, KubeError> {
    let event: Value = serde_json::from_slice(line)
        .map_err(|e| KubeError::Failed(format!("a {} watch event is not JSON: {e}", r.name)))?;
    let kind = event
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(object) = event.get("object") else {
        return Err(KubeError::Failed(format!(
            "a {} watch event has no object",
            r.name
        )));
    };
    if kind == "ERROR" {
        // A metav1.Status: 410 means the version is gone.
        if object.get("code").and_then(Value::as_u64) == Some(410) {
            return Err(KubeError::Gone);
        }
        let why = object
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return Err(KubeError::Failed(format!(
            "the {} watch ended with an error: {}",
            r.name,
            crate::error::peer_text(why)
        )));
    }
    if let Some(v) = object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        *version = v.to_string();
    }
    if kind == "BOOKMARK" {
        return Ok(false);
    }
    let Some(key) = key_of(object) else {
        return Err(KubeError::Failed(format!(
            "a {} watch event's object has no namespace and name",
            r.name
        )));
    };
    let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
    Ok(match kind {
        "ADDED" | "MODIFIED" => s.objects.insert(key, object.clone()).as_ref() != Some(object),
        "DELETED" => s.objects.remove(&key).is_some(),
        other => {
            return Err(KubeError::Failed(format!(
                "a {} watch event of unknown type {:?}",
                r.name,
                crate::error::peer_text(other)
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: Resource = Resource {
        name: "httproutes",
        path: "/apis/gateway.networking.k8s.io/v1/httproutes",
        optional: false,
    };

    fn obj(ns: &str, name: &str, rv: &str, x: u32) -> Value {
        serde_json::json!({"metadata": {"namespace": ns, "name": name, "resourceVersion": rv}, "spec": {"x": x}})
    }

    fn event(kind: &str, o: &Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"type": kind, "object": o})).unwrap()
    }

    #[test]
    fn events_change_the_store_as_the_server_says() {
        let store = Mutex::new(Store::default());
        let mut v = String::from("1");
        let a = obj("demo", "a", "5", 1);
        assert_eq!(
            apply(&ROUTES, &event("ADDED", &a), &store, &mut v),
            Ok(true)
        );
        assert_eq!(v, "5");
        // The same object again changes nothing.
        assert_eq!(
            apply(&ROUTES, &event("MODIFIED", &a), &store, &mut v),
            Ok(false)
        );
        let a2 = obj("demo", "a", "6", 2);
        assert_eq!(
            apply(&ROUTES, &event("MODIFIED", &a2), &store, &mut v),
            Ok(true)
        );
        let bookmark = serde_json::json!({"metadata": {"resourceVersion": "9"}});
        assert_eq!(
            apply(&ROUTES, &event("BOOKMARK", &bookmark), &store, &mut v),
            Ok(false)
        );
        assert_eq!(v, "9");
        assert_eq!(
            apply(&ROUTES, &event("DELETED", &a2), &store, &mut v),
            Ok(true)
        );
        assert!(store.lock().unwrap().objects.is_empty());
        // 410 in an ERROR event: list again; other errors and junk are errors.
        let gone = serde_json::json!({"kind": "Status", "code": 410, "message": "too old"});
        assert_eq!(
            apply(&ROUTES, &event("ERROR", &gone), &store, &mut v),
            Err(KubeError::Gone)
        );
        let other = serde_json::json!({"kind": "Status", "code": 500, "message": "boom"});
        assert!(apply(&ROUTES, &event("ERROR", &other), &store, &mut v).is_err());
        assert!(apply(&ROUTES, b"{not json", &store, &mut v).is_err());
        let nameless = serde_json::json!({"metadata": {}});
        assert!(apply(&ROUTES, &event("ADDED", &nameless), &store, &mut v).is_err());
    }
}
