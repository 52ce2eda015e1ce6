//! `/config_dump` as `istioctl ztunnel-config` reads it: serde mirrors of istioctl's Go types
//! (`istioctl/pkg/writer/ztunnel/configdump/api.go` and `configdump.go`, istio commit
//! 86c9f01f), with the same field types, decoded the way Go's `encoding/json` does.
//!
//! What is mirrored, because it decides whether istioctl can read a dump at all:
//! - every field has the Go field's type: a JSON value of another type fails the decode
//!   (istioctl then fails the whole command), e.g. a number where Go has `string`, a string
//!   where Go has `uint32` or `[]string`, a negative or fractional number for an unsigned
//!   integer, a non-numeric key of a `map[uint16]uint16`;
//! - a missing key or a JSON `null` leaves the Go zero value (`""`, `0`, empty list), so both
//!   decode; unknown keys are ignored;
//! - `workloads`, `services`, `policies` and `certificates` may each be a list or an object
//!   whose values are the items (`unmarshalListOrMap`); `cidrVips` entries may be a
//!   `network/cidr` string or an object (`CIDRVIP.UnmarshalJSON`);
//! - the document must be a JSON object.
//!
//! Where this is stricter than Go (none of it is something a producer should emit): keys are
//! matched case-sensitively (Go also accepts other casings of a key), and a `null` element
//! inside a list or map is rejected.

use std::collections::HashMap;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer};
use serde_json::Value;

/// A field as Go decodes it: `null` (or a missing key, with `#[serde(default)]`) is the zero
/// value; any other JSON type than the field's fails.
fn go<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A struct-typed field (Go struct or pointer to one): a JSON object, or `null` for the zero
/// value. serde would also build a struct from a JSON array; Go refuses that.
fn go_struct<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + Default,
{
    match Value::deserialize(d)? {
        Value::Null => Ok(T::default()),
        obj @ Value::Object(_) => serde_json::from_value(obj).map_err(de::Error::custom),
        other => Err(de::Error::custom(format!(
            "cannot unmarshal {} into a Go struct",
            kind(&other)
        ))),
    }
}

/// One item of a list or map of structs: an object.
fn object<T: DeserializeOwned>(v: Value) -> Result<T, String> {
    match v {
        obj @ Value::Object(_) => serde_json::from_value(obj).map_err(|e| e.to_string()),
        other => Err(format!(
            "cannot unmarshal {} into a Go struct",
            kind(&other)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A Go `[]T` or `[]*T` of structs.
fn go_structs<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match Value::deserialize(d)? {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .map(|v| object(v).map_err(de::Error::custom))
            .collect(),
        other => Err(de::Error::custom(format!(
            "cannot unmarshal {} into a Go slice",
            kind(&other)
        ))),
    }
}

/// A Go `map[string]*T` of structs (a `null` value is a nil pointer).
fn go_struct_map<'de, D, T>(d: D) -> Result<HashMap<String, Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match Value::deserialize(d)? {
        Value::Null => Ok(HashMap::new()),
        Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                Value::Null => Ok((k, None)),
                v => object(v).map(|t| (k, Some(t))).map_err(de::Error::custom),
            })
            .collect(),
        other => Err(de::Error::custom(format!(
            "cannot unmarshal {} into a Go map",
            kind(&other)
        ))),
    }
}

/// Go `[][][]*PolicyMatch`.
type Rules = Vec<Vec<Vec<Option<PolicyMatch>>>>;

fn go_rules<'de, D: Deserializer<'de>>(d: D) -> Result<Rules, D::Error> {
    fn list(v: Value) -> Result<Vec<Value>, String> {
        match v {
            Value::Null => Ok(Vec::new()),
            Value::Array(items) => Ok(items),
            other => Err(format!("cannot unmarshal {} into a Go slice", kind(&other))),
        }
    }
    let nested = |top: Value| -> Result<Rules, String> {
        list(top)?
            .into_iter()
            .map(|rule| {
                list(rule)?
                    .into_iter()
                    .map(|clause| {
                        list(clause)?
                            .into_iter()
                            .map(|m| match m {
                                Value::Null => Ok(None),
                                m => object(m).map(Some),
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect()
    };
    nested(Value::deserialize(d)?).map_err(de::Error::custom)
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Locality {
    #[serde(default, deserialize_with = "go")]
    pub region: String,
    #[serde(default, deserialize_with = "go")]
    pub zone: String,
    #[serde(default, deserialize_with = "go")]
    pub subzone: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZtunnelWorkload {
    #[serde(default, deserialize_with = "go")]
    pub uid: String,
    #[serde(default, deserialize_with = "go")]
    pub workload_ips: Vec<String>,
    #[serde(default, deserialize_with = "go_struct")]
    pub waypoint: Option<GatewayAddress>,
    #[serde(default, deserialize_with = "go_struct")]
    pub network_gateway: Option<GatewayAddress>,
    #[serde(default, deserialize_with = "go")]
    pub protocol: String,
    #[serde(default, deserialize_with = "go")]
    pub name: String,
    #[serde(default, deserialize_with = "go")]
    pub namespace: String,
    #[serde(default, deserialize_with = "go")]
    pub service_account: String,
    #[serde(default, deserialize_with = "go")]
    pub workload_name: String,
    #[serde(default, deserialize_with = "go")]
    pub workload_type: String,
    #[serde(default, deserialize_with = "go")]
    pub canonical_name: String,
    #[serde(default, deserialize_with = "go")]
    pub canonical_revision: String,
    #[serde(default, deserialize_with = "go")]
    pub cluster_id: String,
    #[serde(default, deserialize_with = "go")]
    pub trust_domain: String,
    #[serde(default, deserialize_with = "go_struct")]
    pub locality: Locality,
    #[serde(default, deserialize_with = "go")]
    pub node: String,
    #[serde(default, deserialize_with = "go")]
    pub network: String,
    #[serde(default, deserialize_with = "go")]
    pub status: String,
    #[serde(default, deserialize_with = "go")]
    pub hostname: String,
    /// Go `uint32`.
    #[serde(default, deserialize_with = "go")]
    pub capacity: u32,
    #[serde(default, deserialize_with = "go_struct")]
    pub application_tunnel: ApplicationTunnel,
    #[serde(default, deserialize_with = "go")]
    pub authorization_policies: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApplicationTunnel {
    #[serde(default, deserialize_with = "go")]
    pub protocol: String,
    /// Go `*uint16`.
    #[serde(default, deserialize_with = "go")]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct GatewayAddress {
    #[serde(default, deserialize_with = "go")]
    pub destination: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    #[serde(default, deserialize_with = "go")]
    pub mode: String,
    #[serde(default, deserialize_with = "go")]
    pub routing_preferences: Vec<String>,
    #[serde(default, deserialize_with = "go")]
    pub health_policy: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ZtunnelEndpoint {
    #[serde(rename = "workloadUid", default, deserialize_with = "go")]
    pub workload_uid: String,
    #[serde(default, deserialize_with = "go")]
    pub service: String,
    #[serde(default, deserialize_with = "go")]
    pub address: String,
    /// Go `map[uint16]uint16`: keys are decimal strings of a `uint16`.
    #[serde(default, deserialize_with = "go")]
    pub port: HashMap<u16, u16>,
}

/// Go's `CIDRVIP`: an object `{cidr, network}` or a `network/cidr` string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrVip {
    pub cidr: String,
    pub network: String,
}

impl<'de> Deserialize<'de> for CidrVip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Object {
            #[serde(default, deserialize_with = "go")]
            cidr: String,
            #[serde(default, deserialize_with = "go")]
            network: String,
        }
        match Value::deserialize(d)? {
            Value::Null => Ok(CidrVip::default()),
            Value::String(s) => match s.split_once('/') {
                Some((network, cidr)) => Ok(CidrVip {
                    cidr: cidr.into(),
                    network: network.into(),
                }),
                None => Err(de::Error::custom(format!("invalid cidrVip {s:?}"))),
            },
            other => {
                let o: Object = object(other).map_err(de::Error::custom)?;
                Ok(CidrVip {
                    cidr: o.cidr,
                    network: o.network,
                })
            }
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZtunnelService {
    #[serde(default, deserialize_with = "go")]
    pub name: String,
    #[serde(default, deserialize_with = "go")]
    pub namespace: String,
    #[serde(default, deserialize_with = "go")]
    pub hostname: String,
    /// Go `Addresses []string` with JSON key `vips`: `network/ip` strings.
    #[serde(rename = "vips", default, deserialize_with = "go")]
    pub addresses: Vec<String>,
    #[serde(rename = "cidrVips", default, deserialize_with = "go")]
    pub cidr_vips: Vec<CidrVip>,
    /// Go `map[string]int`.
    #[serde(default, deserialize_with = "go")]
    pub ports: HashMap<String, i64>,
    #[serde(default, deserialize_with = "go_struct")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default, deserialize_with = "go_struct")]
    pub waypoint: Option<GatewayAddress>,
    /// Go `map[string]*ZtunnelEndpoint` (a `null` value is a nil pointer).
    #[serde(default, deserialize_with = "go_struct_map")]
    pub endpoints: HashMap<String, Option<ZtunnelEndpoint>>,
    #[serde(default, deserialize_with = "go")]
    pub subject_alt_names: Vec<String>,
    #[serde(rename = "ipFamilies", default, deserialize_with = "go")]
    pub ip_families: String,
    #[serde(default, deserialize_with = "go")]
    pub canonical: bool,
    #[serde(default, deserialize_with = "go")]
    pub visibility: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMatch {
    #[serde(default, deserialize_with = "go_structs")]
    pub namespaces: Vec<StringMatch>,
    #[serde(default, deserialize_with = "go_structs")]
    pub not_namespaces: Vec<StringMatch>,
    #[serde(default, deserialize_with = "go_structs")]
    pub principals: Vec<StringMatch>,
    #[serde(default, deserialize_with = "go_structs")]
    pub not_principals: Vec<StringMatch>,
    #[serde(default, deserialize_with = "go")]
    pub source_ips: Vec<String>,
    #[serde(default, deserialize_with = "go")]
    pub not_source_ips: Vec<String>,
    #[serde(default, deserialize_with = "go")]
    pub destination_ips: Vec<String>,
    #[serde(default, deserialize_with = "go")]
    pub not_destination_ips: Vec<String>,
    #[serde(default, deserialize_with = "go")]
    pub destination_ports: Vec<u16>,
    #[serde(default, deserialize_with = "go")]
    pub not_destination_ports: Vec<u16>,
    #[serde(default, deserialize_with = "go_structs")]
    pub service_accounts: Vec<ServiceAccountMatch>,
    #[serde(default, deserialize_with = "go_structs")]
    pub not_service_accounts: Vec<ServiceAccountMatch>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StringMatch {
    #[serde(rename = "Exact", default, deserialize_with = "go")]
    pub exact: String,
    #[serde(rename = "Suffix", default, deserialize_with = "go")]
    pub suffix: String,
    #[serde(rename = "Prefix", default, deserialize_with = "go")]
    pub prefix: String,
    /// Go `any`: whatever JSON it holds.
    #[serde(rename = "Presence", default)]
    pub presence: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountMatch {
    #[serde(default, deserialize_with = "go")]
    pub namespace: String,
    #[serde(default, deserialize_with = "go")]
    pub service_account: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ZtunnelPolicy {
    #[serde(default, deserialize_with = "go")]
    pub name: String,
    #[serde(default, deserialize_with = "go")]
    pub namespace: String,
    #[serde(default, deserialize_with = "go")]
    pub scope: String,
    #[serde(default, deserialize_with = "go")]
    pub action: String,
    /// Go `[][][]*PolicyMatch`: rules → clauses → matches.
    #[serde(default, deserialize_with = "go_rules")]
    pub rules: Rules,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertsDump {
    #[serde(default, deserialize_with = "go")]
    pub identity: String,
    #[serde(default, deserialize_with = "go")]
    pub state: String,
    #[serde(default, deserialize_with = "go_structs")]
    pub cert_chain: Vec<Cert>,
    #[serde(rename = "rootCerts", default, deserialize_with = "go_structs")]
    pub root_cert: Vec<Cert>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cert {
    #[serde(default, deserialize_with = "go")]
    pub pem: String,
    #[serde(default, deserialize_with = "go")]
    pub serial_number: String,
    #[serde(default, deserialize_with = "go")]
    pub valid_from: String,
    #[serde(default, deserialize_with = "go")]
    pub expiration_time: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct WorkloadState {
    #[serde(default, deserialize_with = "go")]
    pub state: String,
    #[serde(default, deserialize_with = "go_struct")]
    pub connections: WorkloadConnections,
    #[serde(default, deserialize_with = "go_struct")]
    pub info: WorkloadInfo,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct WorkloadConnections {
    #[serde(default, deserialize_with = "go_structs")]
    pub inbound: Vec<Connection>,
    #[serde(default, deserialize_with = "go_structs")]
    pub outbound: Vec<Connection>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadInfo {
    #[serde(default, deserialize_with = "go")]
    pub name: String,
    #[serde(default, deserialize_with = "go")]
    pub namespace: String,
    #[serde(default, deserialize_with = "go")]
    pub trust_domain: String,
    #[serde(default, deserialize_with = "go")]
    pub service_account: String,
}

/// Go's `InboundConnection` and `OutboundConnection` (the same fields).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    #[serde(default, deserialize_with = "go")]
    pub src: String,
    #[serde(default, deserialize_with = "go")]
    pub original_dst: String,
    #[serde(default, deserialize_with = "go")]
    pub actual_dst: String,
    #[serde(default, deserialize_with = "go")]
    pub protocol: String,
}

/// Go's `ZtunnelDump`, as `ConfigWriter::Prime` fills it.
#[derive(Debug, Clone, Default)]
pub struct ZtunnelDump {
    pub workloads: Vec<ZtunnelWorkload>,
    pub services: Vec<ZtunnelService>,
    pub policies: Vec<ZtunnelPolicy>,
    pub certificates: Vec<CertsDump>,
    /// Go `map[string]WorkloadState` (a `null` value is the zero value).
    pub workload_state: HashMap<String, WorkloadState>,
}

/// `unmarshalListOrMap`: a list of items, or an object whose values are the items; absent or
/// `null` is empty.
fn list_or_map<T: DeserializeOwned>(v: Option<Value>) -> Result<Vec<T>, serde_json::Error> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| object(v).map_err(de::Error::custom))
            .collect(),
        Some(Value::Object(map)) => map
            .into_iter()
            .map(|(_, v)| object(v).map_err(de::Error::custom))
            .collect(),
        Some(other) => Err(de::Error::custom(format!(
            "cannot unmarshal {} into a Go map",
            kind(&other)
        ))),
    }
}

/// `ConfigWriter::Prime`: decodes a `/config_dump` body as istioctl does, failing where it
/// fails.
pub fn prime(body: &str) -> Result<ZtunnelDump, serde_json::Error> {
    // Go's `rawDump`: the four lists kept raw, then decoded one by one.
    #[derive(Deserialize)]
    struct RawDump {
        #[serde(default)]
        services: Option<Value>,
        #[serde(default)]
        workloads: Option<Value>,
        #[serde(default)]
        policies: Option<Value>,
        #[serde(default)]
        certificates: Option<Value>,
        #[serde(
            rename = "workloadstate",
            alias = "workloadState",
            default,
            deserialize_with = "go_struct_map"
        )]
        workload_state: HashMap<String, Option<WorkloadState>>,
    }
    let raw: RawDump = object(serde_json::from_str(body)?).map_err(de::Error::custom)?;
    Ok(ZtunnelDump {
        services: list_or_map(raw.services)?,
        workloads: list_or_map(raw.workloads)?,
        certificates: list_or_map(raw.certificates)?,
        policies: list_or_map(raw.policies)?,
        workload_state: raw
            .workload_state
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_go_zero_values_lists_or_maps_and_type_mismatches() {
        // Missing keys and nulls are zero values; a map of workloads is accepted.
        let d = prime(
            r#"{"workloads": {"a": {"uid": "u", "name": null, "capacity": 3}},
                "services": null, "unknown": 1,
                "certificates": [{"identity": "i", "certChain": null}]}"#,
        )
        .unwrap();
        assert_eq!(d.workloads.len(), 1);
        assert_eq!(d.workloads[0].uid, "u");
        assert_eq!(d.workloads[0].name, "");
        assert_eq!(d.workloads[0].capacity, 3);
        assert!(d.services.is_empty() && d.policies.is_empty());
        assert!(d.certificates[0].cert_chain.is_empty());
        // CIDR VIPs in both spellings.
        let d = prime(r#"{"services": [{"cidrVips": ["net/10.0.0.0/8", {"cidr": "1.0.0.0/8"}]}]}"#)
            .unwrap();
        assert_eq!(d.services[0].cidr_vips[0].network, "net");
        assert_eq!(d.services[0].cidr_vips[0].cidr, "10.0.0.0/8");
        assert_eq!(d.services[0].cidr_vips[1].cidr, "1.0.0.0/8");
        // Integer-keyed maps from decimal keys; nil endpoints; nested rules.
        let d = prime(
            r#"{"services": [{"ports": {"80": 8080}, "endpoints": {"u": {"port": {"80": 8080}}, "v": null}}],
                "policies": [{"rules": [[[{"principals": [{"Exact": "p"}], "destinationPorts": [80]}, null]]]}]}"#,
        )
        .unwrap();
        assert_eq!(d.services[0].ports["80"], 8080);
        let u = d.services[0].endpoints["u"].as_ref().unwrap();
        assert_eq!(u.port[&80], 8080);
        assert!(d.services[0].endpoints["v"].is_none());
        let m = d.policies[0].rules[0][0][0].as_ref().unwrap();
        assert_eq!(m.principals[0].exact, "p");
        assert_eq!(m.destination_ports, [80]);
        assert!(d.policies[0].rules[0][0][1].is_none());
        // Type mismatches fail, as Go's decoder does.
        for bad in [
            r#"[]"#,
            r#"{"workloads": [{"capacity": "1"}]}"#,
            r#"{"workloads": [{"capacity": -1}]}"#,
            r#"{"workloads": [{"capacity": 1.5}]}"#,
            r#"{"workloads": [{"workloadIps": "10.0.0.1"}]}"#,
            r#"{"workloads": [{"name": 7}]}"#,
            r#"{"workloads": "x"}"#,
            r#"{"services": [{"ports": {"80": "8080"}}]}"#,
            r#"{"services": [{"endpoints": {"u": {"port": {"http": 80}}}}]}"#,
            r#"{"services": [{"endpoints": {"u": {"port": {"80": 70000}}}}]}"#,
            r#"{"services": [{"cidrVips": ["no-slash"]}]}"#,
            r#"{"certificates": [{"certChain": [{"serialNumber": 12}]}]}"#,
            r#"{"policies": [{"rules": [[{"principals": []}]]}]}"#,
            r#"{"workloads": [{"locality": []}]}"#,
            r#"{"workloads": [[]]}"#,
            r#"{"services": [{"endpoints": {"u": ["x"]}}]}"#,
            r#"{"certificates": [{"certChain": [["pem"]]}]}"#,
        ] {
            assert!(prime(bad).is_err(), "accepted {bad}");
        }
    }
}
