//! JSON Web Tokens: validation (RequestAuthentication, `requestPrincipals`, claims to
//! headers); with the helpers of the security tests.
use super::*;

// ---------------------------------------------------------------------------------------
// JWT: validation.

#[test]
fn valid_token_passes_and_is_removed() {
    let s = Signer::es256();
    let t = jwt_table(jwt_rule(&s), "");
    assert_eq!(t.counts(), (0, 1));
    let mut p = bearer(&s.sign(&claims("alice")));
    assert_eq!(check(&t, &mut p), Ok(()));
    assert!(p.headers.get("authorization").is_none());
    assert_eq!(p.headers.get("host").unwrap(), HOST);
}

#[test]
fn forward_original_token_keeps_it() {
    let s = Signer::es256();
    let mut rule = jwt_rule(&s);
    rule["forwardOriginalToken"] = json!(true);
    let t = jwt_table(rule, "");
    let token = s.sign(&claims("alice"));
    let mut p = bearer(&token);
    assert_eq!(check(&t, &mut p), Ok(()));
    assert_eq!(
        p.headers.get("authorization").unwrap(),
        &format!("Bearer {token}")
    );
}

#[test]
fn services_without_jwt_rules_do_not_look_at_tokens() {
    let s = Signer::es256();
    let t = jwt_table(jwt_rule(&s), "");
    let mut p = bearer("abc");
    assert_eq!(
        t.check(
            &ServiceRef::new("demo", "other"),
            None,
            80,
            &client(),
            &mut p
        ),
        Ok(())
    );
    assert!(p.headers.get("authorization").is_some());
}

#[test]
fn expired_token_is_refused() {
    let s = Signer::es256();
    let t = jwt_table(jwt_rule(&s), "");
    let c = json!({ "iss": ISS, "sub": "alice", "exp": now() - 600 });
    let mut p = bearer(&s.sign(&c));
    assert_eq!(check(&t, &mut p), unauthenticated("Jwt is expired"));
    // A refused token is left on the (unforwarded) request.
    assert!(p.headers.get("authorization").is_some());
}

#[test]
fn recently_expired_token_is_within_leeway() {
    let s = Signer::es256();
    let t = jwt_table(jwt_rule(&s), "");
    let c = json!({ "iss": ISS, "sub": "alice", "exp": now() - 30 });
    assert_eq!(check(&t, &mut bearer(&s.sign(&c))), Ok(()));
}

#[test]
fn not_yet_valid_token_is_refused() {
    let s = Signer::es256();
    let t = jwt_table(jwt_rule(&s), "");
    let c = json!({ "iss": ISS, "sub": "alice", "exp": now() + 3600, "nbf": now() + 600 });
    assert_eq!(
        check(&t, &mut bearer(&s.sign(&c))),
        unauthenticated("Jwt not yet valid")
    );
    // Within the leeway.
    let c = json!({ "iss": ISS, "sub": "alice", "exp": now() + 3600, "nbf": now() + 30 });
    assert_eq!(check(&t, &mut bearer(&s.sign(&c))), Ok(()));
}

#[test]
fn token_without_exp_is_accepted() {
    let s = Signer::es256();
    let t = jwt_table(jwt_rule(&s), "");
    let c = json!({ "iss": ISS, "sub": "alice" });
    assert_eq!(check(&t, &mut bearer(&s.sign(&c))), Ok(()));
}

#[test]
fn unknown_issuer_is_refused() {
    let s = Signer::es256();
    let t = jwt_table(jwt_rule(&s), "");
    let c = json!({ "iss": "https://evil.example", "sub": "alice", "exp": now() + 600 });
    assert_eq!(
        check(&t, &mut bearer(&s.sign(&c))),
        unauthenticated("Jwt issuer is not configured")
    );
    let c = json!({ "sub": "alice", "exp": now() + 600 });
    assert_eq!(
        check(&t, &mut bearer(&s.sign(&c))),
        unauthenticated("Jwt issuer is not configured")
    );
}

#[test]
fn audiences() {
    let s = Signer::es256();
    let mut rule = jwt_rule(&s);
    rule["audiences"] = json!(["web", "api"]);
    let t = jwt_table(rule, "");
    let with_aud = |aud: Value| {
        let mut c = claims("alice");
        c["aud"] = aud;
        bearer(&s.sign(&c))
    };
    assert_eq!(check(&t, &mut with_aud(json!("api"))), Ok(()));
    assert_eq!(check(&t, &mut with_aud(json!(["x", "web"]))), Ok(()));
    assert_eq!(
        check(&t, &mut with_aud(json!("other"))),
        unauthenticated("Audiences in Jwt are not allowed")
    );
    assert_eq!(
        check(&t, &mut with_aud(json!(["x", "y"]))),
        unauthenticated("Audiences in Jwt are not allowed")
    );
    assert_eq!(
        check(&t, &mut bearer(&s.sign(&claims("alice")))),
        unauthenticated("Audiences in Jwt are not allowed")
    );

    // Without audiences in the rule, any `aud` is accepted.
    let t = jwt_table(jwt_rule(&s), "");
    assert_eq!(check(&t, &mut with_aud(json!("anything"))), Ok(()));
}

#[test]
fn token_signed_by_another_key_is_refused() {
    let s = Signer::es256();
    let other = Signer::es256();
    let t = jwt_table(jwt_rule(&s), "");
    assert_eq!(
        check(&t, &mut bearer(&other.sign(&claims("alice")))),
        unauthenticated("Jwt verification fails")
    );
    // Even when expired: the signature is checked first.
    let c = json!({ "iss": ISS, "sub": "alice", "exp": now() - 600 });
    assert_eq!(
        check(&t, &mut bearer(&other.sign(&c))),
        unauthenticated("Jwt verification fails")
    );
}

#[test]
fn tampered_payload_is_refused() {
    let s = Signer::es256();
    let t = jwt_table(jwt_rule(&s), "");
    let token = s.sign(&claims("alice"));
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims("admin"),
        &Signer::es256().key,
    )
    .unwrap();
    // alice's header and signature around admin's payload.
    let mut a = token.split('.');
    let (h, _, sig) = (a.next().unwrap(), a.next(), a.next().unwrap());
    let payload = forged.split('.').nth(1).unwrap();
    let spliced = format!("{h}.{payload}.{sig}");
    assert_eq!(
        check(&t, &mut bearer(&spliced)),
        unauthenticated("Jwt verification fails")
    );
}

#[test]
fn malformed_tokens_are_refused() {
    let s = Signer::es256();
    let t = jwt_table(jwt_rule(&s), "");
    for token in ["abc", "a.b", "a.b.c", "..", "a.b.c.d"] {
        assert!(
            matches!(
                check(&t, &mut bearer(token)),
                Err(Refusal::Unauthenticated(_))
            ),
            "{token}"
        );
    }
    assert_eq!(
        check(&t, &mut bearer("abc")),
        unauthenticated(
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
        )
    );
}

#[test]
fn unsigned_and_hmac_tokens_are_refused() {
    let s = Signer::es256();
    let t = jwt_table(jwt_rule(&s), "");
    let b64 = |v: &Value| {
        use base64_free::encode;
        encode(v.to_string().as_bytes())
    };
    // alg none.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims("alice"))
    );
    assert!(matches!(
        check(&t, &mut bearer(&none)),
        Err(Refusal::Unauthenticated(_))
    ));
    // HS256 with some secret (an attacker might use the public key's bytes).
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("alice"),
        &EncodingKey::from_secret(b"secret").unwrap(),
    )
    .unwrap();
    assert_eq!(
        check(&t, &mut bearer(&hs)),
        unauthenticated("Jwt verification fails")
    );
}

/// Base64url without padding, enough to hand-craft a token without a dependency.
mod base64_free {
    pub fn encode(data: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn known_vectors() {
        assert_eq!(encode(b""), "");
        assert_eq!(encode(b"f"), "Zg");
        assert_eq!(encode(b"fo"), "Zm8");
        assert_eq!(encode(b"foo"), "Zm9v");
        assert_eq!(encode(b"foob"), "Zm9vYg");
        assert_eq!(encode(&[0xfb, 0xff]), "-_8");
    }
}

#[test]
fn missing_token_is_no_error_but_has_no_principal() {
    let s = Signer::es256();
    let t = jwt_table(
        jwt_rule(&s),
        r#"
- name: require-jwt
  namespace: demo
  targetRefs: [{name: web}]
  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]
"#,
    );
    assert_eq!(check(&t, &mut get("/")), denied("demo/require-jwt"));
    // A non-Bearer Authorization header is no token either.
    let mut p = parts("GET", "/", &[("authorization", "Basic dXNlcjpwYXNz")]);
    assert_eq!(check(&t, &mut p), denied("demo/require-jwt"));
    assert!(p.headers.get("authorization").is_some());
    // With a token.
    assert_eq!(check(&t, &mut bearer(&s.sign(&claims("alice")))), Ok(()));

    // Without policies a missing token is just fine.
    let t = jwt_table(jwt_rule(&s), "");
    assert_eq!(check(&t, &mut get("/")), Ok(()));
}

#[test]
fn deny_not_request_principals_refuses_requests_without_token() {
    let s = Signer::es256();
    let t = jwt_table(
        jwt_rule(&s),
        r#"
- name: p
  namespace: demo
  targetRefs: [{name: web}]
  action: DENY
  rules: [{from: [{source: {notRequestPrincipals: ["*"]}}]}]
"#,
    );
    assert_eq!(check(&t, &mut get("/")), denied("demo/p"));
    assert_eq!(check(&t, &mut bearer(&s.sign(&claims("alice")))), Ok(()));
}

#[test]
fn request_principals_are_iss_slash_sub() {
    let s = Signer::es256();
    let t = jwt_table(
        jwt_rule(&s),
        r#"
- name: p
  namespace: demo
  targetRefs: [{name: web}]
  rules:
  - from: [{source: {requestPrincipals: ["https://issuer.example/alice", "https://issuer.example/team-*"]}}]
"#,
    );
    assert_eq!(check(&t, &mut bearer(&s.sign(&claims("alice")))), Ok(()));
    assert_eq!(check(&t, &mut bearer(&s.sign(&claims("team-x")))), Ok(()));
    assert_eq!(
        check(&t, &mut bearer(&s.sign(&claims("bob")))),
        denied("demo/p")
    );

    let t = jwt_table(
        jwt_rule(&s),
        r#"
- name: p
  namespace: demo
  targetRefs: [{name: web}]
  action: DENY
  rules: [{from: [{source: {notRequestPrincipals: ["https://issuer.example/alice"]}}]}]
"#,
    );
    assert_eq!(check(&t, &mut bearer(&s.sign(&claims("alice")))), Ok(()));
    assert_eq!(
        check(&t, &mut bearer(&s.sign(&claims("bob")))),
        denied("demo/p")
    );
}

#[test]
fn when_on_claims_audiences_presenter_and_principal() {
    let s = Signer::es256();
    let policy = |when: &str| {
        format!(
            "
- name: p
  namespace: demo
  targetRefs: [{{name: web}}]
  rules: [{{when: [{when}]}}]
"
        )
    };
    let token = |extra: Value| {
        let mut c = claims("alice");
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        bearer(&s.sign(&c))
    };

    // An array claim: any element.
    let t = jwt_table(
        jwt_rule(&s),
        &policy(r#"{key: "request.auth.claims[groups]", values: [admin]}"#),
    );
    assert_eq!(
        check(&t, &mut token(json!({"groups": ["dev", "admin"]}))),
        Ok(())
    );
    assert_eq!(check(&t, &mut token(json!({"groups": "admin"}))), Ok(()));
    assert_eq!(
        check(&t, &mut token(json!({"groups": ["dev"]}))),
        denied("demo/p")
    );
    assert_eq!(check(&t, &mut token(json!({}))), denied("demo/p"));
    assert_eq!(check(&t, &mut get("/")), denied("demo/p"));

    // Nested claims.
    let t = jwt_table(
        jwt_rule(&s),
        &policy(r#"{key: "request.auth.claims[realm][roles]", values: ["ops"]}"#),
    );
    assert_eq!(
        check(&t, &mut token(json!({"realm": {"roles": ["x", "ops"]}}))),
        Ok(())
    );
    assert_eq!(
        check(&t, &mut token(json!({"realm": {"roles": "ops"}}))),
        Ok(())
    );
    assert_eq!(
        check(&t, &mut token(json!({"realm": {"other": "ops"}}))),
        denied("demo/p")
    );
    assert_eq!(
        check(&t, &mut token(json!({"roles": "ops"}))),
        denied("demo/p")
    );

    // Number and boolean claims compare as text.
    let t = jwt_table(
        jwt_rule(&s),
        &policy(
            r#"{key: "request.auth.claims[level]", values: ["3"]},
               {key: "request.auth.claims[admin]", values: ["true"]}"#,
        ),
    );
    assert_eq!(
        check(&t, &mut token(json!({"level": 3, "admin": true}))),
        Ok(())
    );
    assert_eq!(
        check(&t, &mut token(json!({"level": 3, "admin": false}))),
        denied("demo/p")
    );

    // Audiences.
    let t = jwt_table(
        jwt_rule(&s),
        &policy(r#"{key: request.auth.audiences, values: ["web"]}"#),
    );
    assert_eq!(check(&t, &mut token(json!({"aud": ["x", "web"]}))), Ok(()));
    assert_eq!(check(&t, &mut token(json!({"aud": "web"}))), Ok(()));
    assert_eq!(
        check(&t, &mut token(json!({"aud": "api"}))),
        denied("demo/p")
    );

    // Presenter.
    let t = jwt_table(
        jwt_rule(&s),
        &policy(r#"{key: request.auth.presenter, values: ["frontend"]}"#),
    );
    assert_eq!(check(&t, &mut token(json!({"azp": "frontend"}))), Ok(()));
    assert_eq!(
        check(&t, &mut token(json!({"azp": "other"}))),
        denied("demo/p")
    );

    // Principal.
    let t = jwt_table(
        jwt_rule(&s),
        &policy(r#"{key: request.auth.principal, values: ["https://issuer.example/alice"]}"#),
    );
    assert_eq!(check(&t, &mut token(json!({}))), Ok(()));
    assert_eq!(
        check(&t, &mut bearer(&s.sign(&claims("bob")))),
        denied("demo/p")
    );

    // notValues on a claim.
    let t = jwt_table(
        jwt_rule(&s),
        &policy(r#"{key: "request.auth.claims[groups]", notValues: ["banned"]}"#),
    );
    assert_eq!(check(&t, &mut token(json!({"groups": ["dev"]}))), Ok(()));
    assert_eq!(
        check(&t, &mut token(json!({"groups": ["dev", "banned"]}))),
        denied("demo/p")
    );
}

#[test]
fn deny_when_not_values_applies_to_requests_without_the_attribute() {
    let s = Signer::es256();
    let t = jwt_table(
        jwt_rule(&s),
        r#"
- name: admins-only
  namespace: demo
  targetRefs: [{name: web}]
  action: DENY
  rules: [{when: [{key: "request.auth.claims[groups]", notValues: ["admin"]}]}]
"#,
    );
    let mut c = claims("alice");
    c["groups"] = json!(["admin"]);
    assert_eq!(check(&t, &mut bearer(&s.sign(&c))), Ok(()));
    c["groups"] = json!(["dev"]);
    assert_eq!(
        check(&t, &mut bearer(&s.sign(&c))),
        denied("demo/admins-only")
    );
    // No groups claim, and no token at all: Istio denies both.
    assert_eq!(
        check(&t, &mut bearer(&s.sign(&claims("alice")))),
        denied("demo/admins-only")
    );
    assert_eq!(check(&t, &mut get("/")), denied("demo/admins-only"));
}

#[test]
fn from_headers_with_custom_header_and_prefix() {
    let s = Signer::es256();
    let mut rule = jwt_rule(&s);
    rule["fromHeaders"] = json!([{ "name": "X-Jwt-Assertion", "prefix": "Token " }]);
    let t = jwt_table(
        rule,
        r#"
- name: p
  namespace: demo
  targetRefs: [{name: web}]
  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]
"#,
    );
    let token = s.sign(&claims("alice"));
    let mut p = parts(
        "GET",
        "/",
        &[
            ("x-jwt-assertion", &format!("Token {token}")),
            ("authorization", "Basic abc"),
        ],
    );
    assert_eq!(check(&t, &mut p), Ok(()));
    assert!(p.headers.get("x-jwt-assertion").is_none());
    assert_eq!(p.headers.get("authorization").unwrap(), "Basic abc");

    // Without the prefix: no token.
    let mut p = parts("GET", "/", &[("x-jwt-assertion", &token)]);
    assert_eq!(check(&t, &mut p), denied("demo/p"));
    // The default location is not looked at once fromHeaders is given.
    assert_eq!(check(&t, &mut bearer(&token)), denied("demo/p"));
}

#[test]
fn from_headers_without_prefix() {
    let s = Signer::es256();
    let mut rule = jwt_rule(&s);
    rule["fromHeaders"] = json!([{ "name": "x-token" }]);
    let t = jwt_table(rule, "");
    let token = s.sign(&claims("alice"));
    let mut p = parts("GET", "/", &[("x-token", &token)]);
    assert_eq!(check(&t, &mut p), Ok(()));
    assert!(p.headers.get("x-token").is_none());
    let mut p = parts("GET", "/", &[("x-token", "garbage")]);
    assert!(matches!(
        check(&t, &mut p),
        Err(Refusal::Unauthenticated(_))
    ));
}

#[test]
fn output_claim_to_headers() {
    let s = Signer::es256();
    let mut rule = jwt_rule(&s);
    rule["outputClaimToHeaders"] = json!([
        { "header": "x-jwt-sub", "claim": "sub" },
        { "header": "x-jwt-level", "claim": "level" },
        { "header": "x-jwt-team", "claim": "org.team" },
        { "header": "x-jwt-admin", "claim": "admin" },
    ]);
    let t = jwt_table(rule, "");

    let mut c = claims("alice");
    c["level"] = json!(7);
    c["org"] = json!({ "team": "infra" });
    c["admin"] = json!(false);
    let mut p = parts(
        "GET",
        "/",
        &[
            ("authorization", &format!("Bearer {}", s.sign(&c))),
            ("x-jwt-sub", "forged"),
        ],
    );
    assert_eq!(check(&t, &mut p), Ok(()));
    assert_eq!(p.headers.get("x-jwt-sub").unwrap(), "alice");
    assert_eq!(p.headers.get_all("x-jwt-sub").iter().count(), 1);
    assert_eq!(p.headers.get("x-jwt-level").unwrap(), "7");
    assert_eq!(p.headers.get("x-jwt-team").unwrap(), "infra");
    assert_eq!(p.headers.get("x-jwt-admin").unwrap(), "false");

    // Claims absent (or not a scalar): a client-sent copy is removed.
    let mut c = json!({ "iss": ISS, "exp": now() + 600 });
    c["org"] = json!({ "team": ["a", "b"] });
    let mut p = parts(
        "GET",
        "/",
        &[
            ("authorization", &format!("Bearer {}", s.sign(&c))),
            ("x-jwt-sub", "forged"),
            ("x-jwt-level", "99"),
            ("x-jwt-team", "root"),
        ],
    );
    assert_eq!(check(&t, &mut p), Ok(()));
    for h in ["x-jwt-sub", "x-jwt-level", "x-jwt-team", "x-jwt-admin"] {
        assert!(p.headers.get(h).is_none(), "{h}");
    }
}

#[test]
fn output_claim_headers_are_removed_without_a_token() {
    let s = Signer::es256();
    let mut rule = jwt_rule(&s);
    rule["outputClaimToHeaders"] = json!([{ "header": "x-jwt-sub", "claim": "sub" }]);
    let t = jwt_table(rule, "");
    let mut p = parts("GET", "/", &[("x-jwt-sub", "admin")]);
    assert_eq!(check(&t, &mut p), Ok(()));
    assert!(p.headers.get("x-jwt-sub").is_none());
}

#[test]
fn oversized_token_is_refused() {
    let s = Signer::es256();
    let t = jwt_table(jwt_rule(&s), "");
    let mut c = claims("alice");
    c["pad"] = json!("x".repeat(MAX_TOKEN_BYTES));
    let token = s.sign(&c);
    assert!(token.len() > MAX_TOKEN_BYTES);
    assert_eq!(
        check(&t, &mut bearer(&token)),
        unauthenticated("Jwt verification fails")
    );
    // A large token under the bound is fine.
    c["pad"] = json!("x".repeat(MAX_TOKEN_BYTES / 2));
    let token = s.sign(&c);
    assert!(token.len() <= MAX_TOKEN_BYTES);
    assert_eq!(check(&t, &mut bearer(&token)), Ok(()));
}

#[test]
fn kid_selects_the_key() {
    let a = Signer::es256().with_kid("a");
    let b = Signer::es256().with_kid("b");
    let t = jwt_table(json!({ "issuer": ISS, "jwks": jwks(&[&a, &b]) }), "");
    let c = claims("alice");
    assert_eq!(check(&t, &mut bearer(&a.sign_kid(Some("a"), &c))), Ok(()));
    assert_eq!(check(&t, &mut bearer(&b.sign_kid(Some("b"), &c))), Ok(()));
    // Without a kid, every key is tried.
    assert_eq!(check(&t, &mut bearer(&b.sign_kid(None, &c))), Ok(()));
    // A kid naming the other key: that key only, which fails.
    assert_eq!(
        check(&t, &mut bearer(&b.sign_kid(Some("a"), &c))),
        unauthenticated("Jwt verification fails")
    );
    // An unknown kid.
    assert_eq!(
        check(&t, &mut bearer(&b.sign_kid(Some("zzz"), &c))),
        unauthenticated("Jwt verification fails")
    );
}

#[test]
fn two_issuers_on_one_service() {
    let a = Signer::es256();
    let b = Signer::es256();
    let rules = vec![
        json!({ "issuer": "https://a.example", "jwks": jwks(&[&a]) }),
        json!({ "issuer": "https://b.example", "jwks": jwks(&[&b]) }),
    ];
    let t = build(&[], &[authn_named("a", rules)]).unwrap();
    let tok = |s: &Signer, iss: &str| {
        bearer(&s.sign(&json!({ "iss": iss, "sub": "x", "exp": now() + 600 })))
    };
    assert_eq!(check(&t, &mut tok(&a, "https://a.example")), Ok(()));
    assert_eq!(check(&t, &mut tok(&b, "https://b.example")), Ok(()));
    // Each issuer's keys only.
    assert_eq!(
        check(&t, &mut tok(&b, "https://a.example")),
        unauthenticated("Jwt verification fails")
    );
}

#[test]
fn jwk_without_alg_gets_the_curves_default() {
    let s = Signer::es256();
    let mut jwk = serde_json::to_value(&s.jwk).unwrap();
    jwk.as_object_mut().unwrap().remove("alg");
    let set = json!({ "keys": [jwk] }).to_string();
    let t = jwt_table(json!({ "issuer": ISS, "jwks": set }), "");
    assert_eq!(check(&t, &mut bearer(&s.sign(&claims("alice")))), Ok(()));
}

#[test]
fn rs256_keys_work() {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let key = EncodingKey::from_rsa_pem(kp.serialize_pem().as_bytes()).unwrap();
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap()).unwrap();
    // Also without `alg`: RSA defaults to RS256.
    jwk.as_object_mut().unwrap().remove("alg");
    let t = jwt_table(
        json!({ "issuer": ISS, "jwks": json!({ "keys": [jwk] }).to_string() }),
        "",
    );
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims("alice"), &key).unwrap();
    assert_eq!(check(&t, &mut bearer(&token)), Ok(()));
    // An ES256 token for the same issuer finds no key of its algorithm.
    let other = Signer::es256();
    assert_eq!(
        check(&t, &mut bearer(&other.sign(&claims("alice")))),
        unauthenticated("Jwt verification fails")
    );
}
