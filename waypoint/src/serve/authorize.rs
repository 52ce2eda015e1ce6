//! Deny before routing, in istiod's waypoint filter order: the CUSTOM policies' provider
//! (`serve/ext_authz.rs`), then authentication (JWT), then the DENY and ALLOW policies on
//! the request as the provider left it. Which policies apply is
//! `crate::security::SecurityTable`'s; this step turns its verdicts into the answers and the
//! record's details Envoy's filters give.

use super::*;

/// The route chosen before a provider's header edits, when it edited and did not ask to
/// route again (Envoy's ext_authz filter runs after its route is chosen); `None` when the
/// route is still to be chosen.
pub(super) type Routed = Option<Result<Arc<Rule>, ()>>;

impl<U: Upstreams> Waypoint<U> {
    /// Lets the request on (`Ok`, with its headers as the provider edited them) or gives
    /// the answer it gets instead, with its outcome (the record's details are set here).
    pub(super) async fn authorize(
        &self,
        target: &Target,
        parts: &mut Parts,
        body: &mut Inbound,
        websocket: bool,
        table: &TelemetryTable,
        rec: &mut Record,
    ) -> Result<Routed, (Outcome, Response<Body>)> {
        let security = self.security.borrow().clone();
        let through = self.gateway.as_ref().map(|gateway| Through {
            gateway,
            root: table.root_namespace(),
        });
        let mut routed = None;
        let custom = security.custom(&target.service, through, target.port, &target.peer, parts);
        let verdict = match custom {
            Ok(Some((provider, policy))) => {
                match self
                    .ext_authz(table, &provider, &policy, target, parts, body, websocket)
                    .await
                {
                    Ok((allowed, reroute)) => {
                        if allowed.edits_request() && !reroute {
                            routed = Some(self.rule_for(target, parts));
                        }
                        allowed.apply_to(parts);
                        // On every answer from here, the waypoint's own too (Envoy adds
                        // them as the response passes its ext_authz filter).
                        rec.on_allow = allowed.downstream;
                        Ok(())
                    }
                    Err((outcome, details, resp)) => {
                        rec.details = Some(details);
                        // What was read of the body for the check, which goes no further.
                        rec.request_bytes.set(body.read_ahead());
                        return Err((outcome, resp));
                    }
                }
            }
            Ok(None) => Ok(()),
            Err(refusal) => Err(refusal),
        };
        let verdict = verdict.and_then(|()| {
            security.check(&target.service, through, target.port, &target.peer, parts)
        });
        if verdict.is_err() {
            // What was read of the body for a CUSTOM check, which goes no further.
            rec.request_bytes.set(body.read_ahead());
        }
        match verdict {
            Ok(()) => Ok(routed),
            Err(Refusal::Unauthenticated(why)) => {
                // Envoy's details: the words, spaces as underscores.
                rec.details = Some(format!(
                    "jwt_authn_access_denied{{{}}}",
                    why.replace(' ', "_")
                ));
                let mut resp = local(StatusCode::UNAUTHORIZED, why);
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"http://waypoint\", error=\"invalid_token\"",
                    ),
                );
                Err((Outcome::Unauthenticated, resp))
            }
            Err(Refusal::Denied(policy)) => {
                tracing::debug!(service = %target.service, %policy, "RBAC: access denied");
                // Envoy names the policy `ns[NS]-policy[NAME]`.
                let (ns, name) = policy.split_once('/').unwrap_or(("", &policy));
                rec.details = Some(format!(
                    "rbac_access_denied_matched_policy[ns[{ns}]-policy[{name}]]"
                ));
                Err((
                    Outcome::Denied,
                    local(StatusCode::FORBIDDEN, "RBAC: access denied"),
                ))
            }
        }
    }
}
