//! The errors of RequestAuthentication configs, each naming its field; with the helpers
//! of the security tests.
use super::*;

// ---------------------------------------------------------------------------------------
// JWT: build errors.

const BASE: &str = "requestAuthentications[demo/a]";

#[test]
fn hmac_jwks_is_refused() {
    for key in [
        json!({ "kty": "oct", "k": "c2VjcmV0", "alg": "HS256" }),
        json!({ "kty": "oct", "k": "c2VjcmV0", "alg": "HS512" }),
        json!({ "kty": "oct", "k": "c2VjcmV0" }),
    ] {
        let e = authn_err(vec![json!({
            "issuer": ISS,
            "jwks": json!({ "keys": [key] }).to_string(),
        })]);
        assert_eq!(e.path, format!("{BASE}.jwtRules[0].jwks.keys[0]"), "{e}");
    }
    // The second key of a set.
    let s = Signer::es256();
    let set = json!({ "keys": [s.jwk, { "kty": "oct", "k": "c2VjcmV0", "alg": "HS256" }] });
    let e = authn_err(vec![json!({ "issuer": ISS, "jwks": set.to_string() })]);
    assert_eq!(e.path, format!("{BASE}.jwtRules[0].jwks.keys[1]"), "{e}");
    assert!(e.message.contains("HMAC"), "{e}");
}

#[test]
fn one_key_source_or_discovery() {
    let s = Signer::es256();
    for two in [
        json!({ "issuer": ISS, "jwks": jwks(&[&s]), "jwksFile": "/etc/jwks.json" }),
        json!({ "issuer": ISS, "jwks": jwks(&[&s]), "jwksUri": "https://issuer.example/keys" }),
        json!({ "issuer": ISS, "jwksFile": "/etc/jwks.json", "jwksUri": "https://issuer.example/keys" }),
    ] {
        let e = authn_err(vec![two.clone()]);
        assert_eq!(e.path, format!("{BASE}.jwtRules[0]"), "{two}: {e}");
    }
    // No keys: discovered from the issuer, which must then be a URL.
    let e = authn_err(vec![jwt_rule(&s), json!({ "issuer": "other" })]);
    assert_eq!(e.path, format!("{BASE}.jwtRules[1]"), "{e}");
    assert!(e.message.contains("cannot be discovered"), "{e}");
    for (rule, field) in [
        (
            json!({ "issuer": ISS, "jwksUri": "ftp://issuer.example/keys" }),
            "jwksUri",
        ),
        (json!({ "issuer": ISS, "jwksUri": "/keys" }), "jwksUri"),
        (
            json!({ "issuer": ISS, "jwksUri": "https://issuer.example/keys", "timeout": "soon" }),
            "timeout",
        ),
    ] {
        let e = authn_err(vec![rule.clone()]);
        assert_eq!(e.path, format!("{BASE}.jwtRules[0].{field}"), "{rule}: {e}");
    }
}

#[test]
fn remote_keys_verify_once_fetched_and_survive_a_reload() {
    let s = Signer::es256();
    let registry = JwksRegistry::default();
    let specs = [authn(
        json!({ "issuer": ISS, "jwksUri": "https://issuer.example/keys" }),
    )];
    let t = SecurityTable::build(&[], &specs, &no_file, &registry).unwrap();
    let token = s.sign(&claims("alice"));
    // Nothing fetched yet: Envoy's words, 401.
    assert_eq!(
        check(&t, &mut bearer(&token)),
        Err(Refusal::Unauthenticated("Jwks remote fetch is failed"))
    );
    let slots = registry.live();
    assert_eq!(slots.len(), 1);
    assert_eq!(
        slots[0].source,
        jwks::Source::Uri("https://issuer.example/keys".into())
    );
    let now = std::time::Instant::now();
    slots[0].record(Ok(jwks::parse(&jwks(&[&s])).unwrap()), now, jwks::REFRESH);
    assert_eq!(check(&t, &mut bearer(&token)), Ok(()));
    // A reload that keeps the rule keeps the slot, and so the keys.
    let again = SecurityTable::build(&[], &specs, &no_file, &registry).unwrap();
    assert_eq!(check(&again, &mut bearer(&token)), Ok(()));
    // A failed refresh keeps them; another signer's token still fails.
    slots[0].record(Err("down".into()), now, jwks::REFRESH);
    assert_eq!(check(&again, &mut bearer(&token)), Ok(()));
    let other = Signer::es256();
    assert!(check(&again, &mut bearer(&other.sign(&claims("bob")))).is_err());
    // Discovery: the issuer's well-known document is the source.
    let d = [authn(json!({ "issuer": ISS }))];
    let _t = SecurityTable::build(&[], &d, &no_file, &registry).unwrap();
    assert!(
        registry
            .live()
            .iter()
            .any(|r| r.source == jwks::Source::Discovery { issuer: ISS.into() })
    );
}

#[test]
fn jwks_file_is_read() {
    let s = Signer::es256();
    let text = jwks(&[&s]);
    let read = |path: &str| -> std::io::Result<String> {
        assert_eq!(path, "/etc/jwks.json");
        Ok(text.clone())
    };
    let a = authn(json!({ "issuer": ISS, "jwksFile": "/etc/jwks.json" }));
    let t = SecurityTable::build(
        &[],
        std::slice::from_ref(&a),
        &read,
        &JwksRegistry::default(),
    )
    .unwrap();
    assert_eq!(check(&t, &mut bearer(&s.sign(&claims("alice")))), Ok(()));

    // A read error names the field and the file.
    let e = SecurityTable::build(
        &[],
        std::slice::from_ref(&a),
        &no_file,
        &JwksRegistry::default(),
    )
    .unwrap_err();
    assert_eq!(e.path, format!("{BASE}.jwtRules[0].jwksFile"), "{e}");
    assert!(e.message.contains("/etc/jwks.json"), "{e}");

    // Bad contents of a file are named as the file's.
    let bad = |_: &str| -> std::io::Result<String> { Ok("not json".into()) };
    let e = SecurityTable::build(&[], &[a], &bad, &JwksRegistry::default()).unwrap_err();
    assert_eq!(e.path, format!("{BASE}.jwtRules[0].jwksFile"), "{e}");
}

#[test]
fn invalid_jwks_is_refused() {
    for text in ["", "not json", "{}", r#"{"keys": "x"}"#, r#"[]"#] {
        let e = authn_err(vec![json!({ "issuer": ISS, "jwks": text })]);
        assert_eq!(e.path, format!("{BASE}.jwtRules[0].jwks"), "{text}: {e}");
    }
    // A key that is not usable.
    for key in [
        json!({ "kty": "EC" }),
        json!({ "kty": "EC", "crv": "P-256", "x": "!!", "y": "AAAA" }),
        json!({ "kty": "RSA", "n": "!!", "e": "AQAB" }),
    ] {
        let e = authn_err(vec![json!({
            "issuer": ISS,
            "jwks": json!({ "keys": [key] }).to_string(),
        })]);
        assert!(
            e.path
                .starts_with(&format!("{BASE}.jwtRules[0].jwks.keys[0]")),
            "{key}: {e}"
        );
    }
    let e = authn_err(vec![json!({ "issuer": ISS, "jwks": r#"{"keys": []}"# })]);
    assert_eq!(e.path, format!("{BASE}.jwtRules[0].jwks"), "{e}");
    assert!(e.message.contains("no key"), "{e}");
    // A key with an alg that cannot sign.
    let s = Signer::es256();
    let mut jwk = serde_json::to_value(&s.jwk).unwrap();
    jwk["alg"] = json!("RSA-OAEP");
    let e = authn_err(vec![json!({
        "issuer": ISS,
        "jwks": json!({ "keys": [jwk] }).to_string(),
    })]);
    assert_eq!(
        e.path,
        format!("{BASE}.jwtRules[0].jwks.keys[0].alg"),
        "{e}"
    );
}

#[test]
fn same_issuer_twice_on_a_service_is_refused() {
    let s = Signer::es256();
    let e = authn_err(vec![jwt_rule(&s), jwt_rule(&s)]);
    assert_eq!(e.path, format!("{BASE}.jwtRules"), "{e}");
    assert!(e.message.contains(ISS), "{e}");

    // Across two RequestAuthentications on the same Service.
    let e = build(
        &[],
        &[
            authn_named("a", vec![jwt_rule(&s)]),
            authn_named("b", vec![jwt_rule(&s)]),
        ],
    )
    .unwrap_err();
    assert_eq!(e.path, "requestAuthentications[demo/b].jwtRules", "{e}");

    // On different Services: fine.
    let mut other: RequestAuthenticationSpec = authn_named("b", vec![jwt_rule(&s)]);
    other.target_refs[0].name = "other".into();
    let t = build(&[], &[authn_named("a", vec![jwt_rule(&s)]), other]).unwrap();
    assert_eq!(t.counts(), (0, 2));
}

#[test]
fn other_authentication_build_errors() {
    let s = Signer::es256();
    let e = authn_err(vec![]);
    assert_eq!(e.path, format!("{BASE}.jwtRules"), "{e}");

    let e = authn_err(vec![json!({ "issuer": "", "jwks": jwks(&[&s]) })]);
    assert_eq!(e.path, format!("{BASE}.jwtRules[0].issuer"), "{e}");

    let mut r = jwt_rule(&s);
    r["fromHeaders"] = json!([{ "name": "bad header" }]);
    let e = authn_err(vec![r]);
    assert_eq!(
        e.path,
        format!("{BASE}.jwtRules[0].fromHeaders[0].name"),
        "{e}"
    );

    let mut r = jwt_rule(&s);
    r["outputClaimToHeaders"] =
        json!([{ "header": "x-ok", "claim": "a" }, { "header": "", "claim": "b" }]);
    let e = authn_err(vec![r]);
    assert_eq!(
        e.path,
        format!("{BASE}.jwtRules[0].outputClaimToHeaders[1].header"),
        "{e}"
    );

    let mut a = authn(jwt_rule(&s));
    a.target_refs.clear();
    let e = build(&[], &[a]).unwrap_err();
    assert_eq!(e.path, format!("{BASE}.targetRefs"), "{e}");

    let mut a = authn(jwt_rule(&s));
    a.target_refs[0].kind = Some("Gateway".into());
    let e = build(&[], &[a]).unwrap_err();
    assert_eq!(e.path, format!("{BASE}.targetRefs[0].group"), "{e}");

    let e = build(&[], &[authn(jwt_rule(&s)), authn(jwt_rule(&s))]).unwrap_err();
    assert_eq!(e.path, BASE, "{e}");
}
