use std::io::Write;

use super::*;

#[test]
fn addresses_get_https_and_refuse_the_rest() {
    assert_eq!(
        normalize_address("istiod.istio-system.svc:15012").unwrap(),
        "https://istiod.istio-system.svc:15012"
    );
    assert_eq!(
        normalize_address(" https://localhost:15012/ ").unwrap(),
        "https://localhost:15012"
    );
    assert_eq!(
        normalize_address("[::1]:15012").unwrap(),
        "https://[::1]:15012"
    );
    for bad in [
        "http://istiod:15012",
        "",
        "https://",
        "https://istiod:15012/x",
        "https://u@h:1",
    ] {
        let e = normalize_address(bad).unwrap_err();
        assert!(matches!(e, Error::Address { .. }), "{bad}: {e}");
    }
    let e = normalize_address("grpc://istiod:15012").unwrap_err();
    assert!(e.to_string().contains("only https"), "{e}");
}

#[test]
fn target_strips_brackets_and_defaults_the_port() {
    let t = Target::parse("https://[::1]:15012").unwrap();
    assert_eq!((t.host.as_str(), t.port), ("::1", 15012));
    let t = Target::parse("https://istiod").unwrap();
    assert_eq!((t.host.as_str(), t.port), ("istiod", 443));
}

#[test]
fn root_ca_rules_follow_ztunnel() {
    let f = tempfile::NamedTempFile::new().unwrap();
    let path = f.path().to_str().unwrap();
    assert_eq!(RootCa::parse(path), RootCa::File(f.path().to_path_buf()));
    assert_eq!(RootCa::parse("SYSTEM"), RootCa::System);
    assert_eq!(
        RootCa::parse("./var/run/secrets/istio/root-cert.pem"),
        RootCa::Pem("./var/run/secrets/istio/root-cert.pem".into())
    );
    // A missing default path is "inline PEM" that holds no certificate: the error says so.
    let e = RootCa::parse("/nonexistent/root-cert.pem")
        .load()
        .unwrap_err();
    assert!(e.to_string().contains("neither an existing file"), "{e}");
    // An empty file names the file.
    let e = RootCa::File(f.path().into()).load().unwrap_err();
    assert!(e.to_string().contains(path), "{e}");
}

#[test]
fn root_ca_loads_pem() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let store = RootCa::Pem(cert.pem()).load().unwrap();
    assert_eq!(store.len(), 1);
}

#[test]
fn token_rules_follow_ztunnel() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let path = f.path().to_path_buf();
    let missing = Path::new("/nonexistent/istio-token");
    assert_eq!(TokenSource::parse(None, missing), TokenSource::None);
    assert_eq!(
        TokenSource::parse(None, &path),
        TokenSource::File(path.clone())
    );
    assert_eq!(
        TokenSource::parse(Some(path.to_str().unwrap()), missing),
        TokenSource::File(path.clone())
    );
    assert_eq!(TokenSource::parse(Some(""), &path), TokenSource::None);
    let s = TokenSource::parse(Some("abc"), missing);
    assert_eq!(s, TokenSource::Static("abc".into()));
    assert!(
        !format!("{s:?}").contains("abc"),
        "a static token is never printed"
    );

    // Empty file: an error naming it.
    let src = TokenSource::File(path.clone());
    let e = src.token().unwrap_err();
    assert!(e.to_string().contains(path.to_str().unwrap()), "{e}");
    assert!(e.to_string().contains("empty"), "{e}");
    f.write_all(b"tok-1\n").unwrap();
    assert_eq!(src.token().unwrap().as_deref(), Some("tok-1"));
}

#[test]
fn headers_are_added_and_checked() {
    let mut cfg = ChannelConfig::new("localhost:15012", RootCa::System).unwrap();
    cfg.headers = headers_from_env(
        "XDS_HEADER_",
        [
            ("XDS_HEADER_X_Team".to_string(), "blue".to_string()),
            ("CA_HEADER_OTHER".to_string(), "no".to_string()),
            ("XDS_HEADER_".to_string(), "empty name".to_string()),
        ],
    );
    assert_eq!(
        cfg.headers,
        vec![("x_team".to_string(), "blue".to_string())]
    );

    // No token: no authorization and no clusterid.
    let h = CallHeaders::new(&cfg).unwrap();
    let mut md = tonic::metadata::MetadataMap::new();
    h.apply(&mut md).unwrap();
    assert!(md.get("authorization").is_none() && md.get("clusterid").is_none());
    assert_eq!(md.get("x_team").unwrap(), "blue");

    cfg.token = TokenSource::Static("s3cret".into());
    cfg.cluster_id = "east".into();
    let h = CallHeaders::new(&cfg).unwrap();
    let mut md = tonic::metadata::MetadataMap::new();
    h.apply(&mut md).unwrap();
    assert_eq!(md.get("authorization").unwrap(), "Bearer s3cret");
    assert_eq!(md.get("clusterid").unwrap(), "east");

    cfg.headers = vec![("bad name".into(), "v".into())];
    assert!(matches!(CallHeaders::new(&cfg), Err(Error::Header { .. })));
    cfg.headers = vec![("ok".into(), "line\nbreak".into())];
    assert!(matches!(CallHeaders::new(&cfg), Err(Error::Header { .. })));
}
