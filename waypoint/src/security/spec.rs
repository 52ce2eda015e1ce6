//! The shape of `authorizationPolicies` and `requestAuthentications` in the mesh config
//! file: Istio's kinds, flattened (`name` and `namespace` beside the spec's fields). Every
//! struct denies unknown keys. The checks are `SecurityTable::build`'s.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRefSpec {
    /// Only `Service` (the default).
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    pub name: String,
    /// Defaults to the policy's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    pub name: String,
    pub namespace: String,
    pub target_refs: Vec<TargetRefSpec>,
    /// `ALLOW` (default), `DENY` or `CUSTOM`.
    #[serde(default)]
    pub action: Option<String>,
    /// The MeshConfig provider a `CUSTOM` policy hands matching requests to.
    #[serde(default)]
    pub provider: Option<ProviderRefSpec>,
    /// ALLOW without rules allows nothing; DENY without rules denies nothing (Istio).
    #[serde(default)]
    pub rules: Vec<AuthzRuleSpec>,
}

/// `provider` of a `CUSTOM` policy: an `extensionProviders` entry, by name.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRefSpec {
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzRuleSpec {
    #[serde(default)]
    pub from: Vec<FromSpec>,
    #[serde(default)]
    pub to: Vec<ToSpec>,
    #[serde(default)]
    pub when: Vec<ConditionSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromSpec {
    pub source: SourceSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// The client's address (`1.2.3.4` or a CIDR): the original source the node proxy
    /// forwarded in the tunnel.
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    /// Istio's `remote.ip` (X-Forwarded-For or PROXY protocol at an ingress; with no
    /// trusted hops, as in a waypoint, the same client address).
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToSpec {
    pub operation: OperationSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperationSpec {
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConditionSpec {
    /// `request.headers[NAME]`, `request.auth.principal`, `request.auth.audiences`,
    /// `request.auth.presenter`, `request.auth.claims[NAME]`, `source.principal`,
    /// `source.namespace`, `source.ip`, `remote.ip` (CIDR values), `destination.port`.
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    pub name: String,
    pub namespace: String,
    pub target_refs: Vec<TargetRefSpec>,
    pub jwt_rules: Vec<JwtRuleSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRuleSpec {
    pub issuer: String,
    /// Accepted `aud` values; empty: not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The JWKS as inline JSON (Istio's `jwks`).
    #[serde(default)]
    pub jwks: Option<String>,
    /// ... or a file holding it (read when the config loads, again on every reload).
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// ... or a URL to fetch it from (`http://` or `https://`), refreshed every 20 minutes.
    /// With none of the three, the keys are found by OpenID discovery from the issuer.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// How long a fetch of the keys may take (Istio's `timeout`; default 5 s).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Where the token is; default `Authorization: Bearer <token>`.
    #[serde(default)]
    pub from_headers: Vec<FromHeaderSpec>,
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeaderSpec>,
    /// Keep the token on the forwarded request (default: removed, as Istio does).
    #[serde(default)]
    pub forward_original_token: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromHeaderSpec {
    pub name: String,
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeaderSpec {
    pub header: String,
    pub claim: String,
}
