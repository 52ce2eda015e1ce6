//! Who the node proxy says it is to istiod: the xDS `Node` (id and metadata).
//!
//! Owns: ztunnel's node identity rules. The id is `ztunnel~<IP>~<pod>.<ns>~<ns>.svc.cluster.local`
//! (istiod splits it on `~`: node type, fallback IP, proxy id, DNS domain; the suffix is
//! fixed, not `CLUSTER_DOMAIN`). The metadata starts from `NAME`, `NAMESPACE`,
//! `INSTANCE_IPS`, `NODE_NAME`; proxy metadata (`ISTIO_META_*`, and whatever the caller adds
//! from mesh config) is merged over it; `ISTIO_METAJSON_*` values are merged last as JSON.
//! istiod checks `NAMESPACE` (and `SERVICE_ACCOUNT`, if sent) against the token's identity.

use std::collections::BTreeMap;

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

use crate::error::{Error, peer_text};
use crate::pb::discovery::Node;

/// The instance IP ztunnel reports when `INSTANCE_IP` is unset.
pub const DEFAULT_INSTANCE_IP: &str = "1.1.1.1";
const META_PREFIX: &str = "ISTIO_META_";
const META_JSON_PREFIX: &str = "ISTIO_METAJSON_";

/// The inputs to the node identity, as ztunnel takes them from its environment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeInfo {
    /// `INSTANCE_IP`; [`DEFAULT_INSTANCE_IP`] when `None`.
    pub instance_ip: Option<String>,
    /// `POD_NAME`.
    pub pod_name: String,
    /// `POD_NAMESPACE`.
    pub pod_namespace: String,
    /// `NODE_NAME`.
    pub node_name: String,
    /// `ISTIO_META_<K>` as `<K>` (prefix stripped), plus any proxy metadata the caller adds
    /// (mesh config `proxyMetadata`). Wins over the four base keys.
    pub proxy_metadata: BTreeMap<String, String>,
    /// `ISTIO_METAJSON_<K>` as `<K>`, parsed. Wins over everything else.
    pub metadata_json: BTreeMap<String, serde_json::Value>,
}

impl NodeInfo {
    /// Reads the node identity from environment pairs (pass `std::env::vars()`). A malformed
    /// `ISTIO_METAJSON_*` value is an error naming the variable (ztunnel logs and skips it;
    /// we refuse to start on a value the operator believes is sent).
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<NodeInfo, Error> {
        let mut info = NodeInfo::default();
        for (k, v) in vars {
            match k.as_str() {
                "INSTANCE_IP" => info.instance_ip = Some(v),
                "POD_NAME" => info.pod_name = v,
                "POD_NAMESPACE" => info.pod_namespace = v,
                "NODE_NAME" => info.node_name = v,
                _ => {
                    if let Some(key) = k.strip_prefix(META_JSON_PREFIX) {
                        if key.is_empty() {
                            continue;
                        }
                        let value = serde_json::from_str(&v).map_err(|e| Error::Env {
                            var: k.clone(),
                            reason: format!("not JSON: {}", peer_text(&e.to_string())),
                        })?;
                        info.metadata_json.insert(key.to_string(), value);
                    } else if let Some(key) = k.strip_prefix(META_PREFIX)
                        && !key.is_empty()
                    {
                        info.proxy_metadata.insert(key.to_string(), v);
                    }
                }
            }
        }
        Ok(info)
    }

    fn ip(&self) -> &str {
        self.instance_ip.as_deref().unwrap_or(DEFAULT_INSTANCE_IP)
    }

    /// `ztunnel~<IP>~<pod>.<ns>~<ns>.svc.cluster.local`.
    pub fn id(&self) -> String {
        let ns = &self.pod_namespace;
        format!(
            "ztunnel~{}~{}.{ns}~{ns}.svc.cluster.local",
            self.ip(),
            self.pod_name
        )
    }

    /// The metadata Struct.
    pub fn metadata(&self) -> Struct {
        let mut fields: BTreeMap<String, Value> = BTreeMap::new();
        for (k, v) in [
            ("NAME", self.pod_name.as_str()),
            ("NAMESPACE", self.pod_namespace.as_str()),
            ("INSTANCE_IPS", self.ip()),
            ("NODE_NAME", self.node_name.as_str()),
        ] {
            fields.insert(k.to_string(), string_value(v));
        }
        for (k, v) in &self.proxy_metadata {
            fields.insert(k.clone(), string_value(v));
        }
        for (k, v) in &self.metadata_json {
            fields.insert(k.clone(), json_value(v));
        }
        Struct { fields }
    }

    /// The `Node` sent on each stream's first request per type.
    pub fn node(&self) -> Node {
        Node {
            id: self.id(),
            metadata: Some(self.metadata()),
            ..Node::default()
        }
    }
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

/// JSON as a protobuf `Value`. serde_json's own nesting limit (128) bounds the recursion.
fn json_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        // Every serde_json number has an f64 form without `arbitrary_precision`.
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), json_value(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn s(v: &Value) -> &str {
        match &v.kind {
            Some(Kind::StringValue(s)) => s,
            other => panic!("not a string: {other:?}"),
        }
    }

    #[test]
    fn id_and_metadata_as_ztunnel_sends() {
        let info = NodeInfo::from_env(env(&[
            ("INSTANCE_IP", "10.0.0.7"),
            ("POD_NAME", "ztunnel-abc"),
            ("POD_NAMESPACE", "istio-system"),
            ("NODE_NAME", "node-1"),
            ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
            ("ISTIO_META_NAME", "overridden"),
            (
                "ISTIO_METAJSON_LABELS",
                r#"{"app":"ztunnel","n":2,"ok":true,"l":[null]}"#,
            ),
            ("PATH", "/bin"),
        ]))
        .unwrap();
        assert_eq!(
            info.id(),
            "ztunnel~10.0.0.7~ztunnel-abc.istio-system~istio-system.svc.cluster.local"
        );
        let m = info.metadata().fields;
        assert_eq!(s(&m["NAMESPACE"]), "istio-system");
        assert_eq!(s(&m["INSTANCE_IPS"]), "10.0.0.7");
        assert_eq!(s(&m["NODE_NAME"]), "node-1");
        assert_eq!(s(&m["CLUSTER_ID"]), "Kubernetes");
        // Proxy metadata wins over the base keys.
        assert_eq!(s(&m["NAME"]), "overridden");
        let Some(Kind::StructValue(labels)) = &m["LABELS"].kind else {
            panic!("LABELS is not a struct: {:?}", m["LABELS"]);
        };
        assert_eq!(s(&labels.fields["app"]), "ztunnel");
        assert_eq!(labels.fields["n"].kind, Some(Kind::NumberValue(2.0)));
        assert_eq!(labels.fields["ok"].kind, Some(Kind::BoolValue(true)));
        assert!(!m.contains_key("PATH"));
    }

    #[test]
    fn defaults_and_bad_json() {
        let info = NodeInfo::from_env(Vec::new()).unwrap();
        assert_eq!(info.id(), "ztunnel~1.1.1.1~.~.svc.cluster.local");
        assert_eq!(s(&info.metadata().fields["INSTANCE_IPS"]), "1.1.1.1");
        let e = NodeInfo::from_env(env(&[("ISTIO_METAJSON_X", "{nope")])).unwrap_err();
        assert!(
            e.to_string().starts_with("ISTIO_METAJSON_X: not JSON"),
            "{e}"
        );
    }
}
