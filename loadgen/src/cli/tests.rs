use super::*;
use clap::CommandFactory;

#[test]
fn durations() {
    assert_eq!(parse_duration("2ms").unwrap(), Duration::from_millis(2));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_duration("500us").unwrap(), Duration::from_micros(500));
    assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
    assert!(parse_duration("2 weeks").is_err());
    assert!(parse_duration("ms").is_err());
}

#[test]
fn core_lists() {
    assert_eq!(parse_cores("1,").unwrap(), runtime::Cores::List(vec![1]));
    assert_eq!(
        parse_cores("0,1").unwrap(),
        runtime::Cores::List(vec![0, 1])
    );
    assert_eq!(parse_cores("2").unwrap(), runtime::Cores::Count(2));
    assert!(parse_cores("x,").is_err());
}

#[test]
fn urls() {
    assert_eq!(
        parse_url("http://127.0.0.1:80/a?b").unwrap(),
        ("127.0.0.1:80".into(), "/a?b".into())
    );
    assert_eq!(parse_url("http://localhost").unwrap().1, "/");
    assert!(parse_url("https://x/").is_err());
    assert!(parse_url("http:///x").is_err());
}

#[test]
fn cli_is_consistent_and_help_documents_json() {
    Cli::command().debug_assert();
    let help = Cli::command().render_long_help().to_string();
    for f in [
        "achieved_rps",
        "requests",
        "errors",
        "latency_us",
        "late_sends",
        "bytes",
        "duration_s",
        "target_rps",
    ] {
        assert!(help.contains(f), "root help lacks {f}");
    }
    let mut cmd = Cli::command();
    let http1 = cmd
        .find_subcommand_mut("http1")
        .unwrap()
        .render_long_help()
        .to_string();
    assert!(http1.contains("p9999") && http1.contains("connect_refused"));
}

#[test]
fn specs_from_args() {
    let cli = Cli::try_parse_from([
        "loadgen",
        "http1",
        "http://127.0.0.1:9/x",
        "--rate",
        "100",
        "--poisson",
        "-c",
        "4",
    ])
    .unwrap();
    let Command::Client(c) = cli.command else {
        panic!()
    };
    let spec = c.spec().unwrap();
    assert_eq!(spec.rate, Some(100.0));
    assert_eq!(spec.arrival, Arrival::Poisson);
    assert_eq!(spec.connections, 4);
    assert_eq!(spec.duration, Some(Duration::from_secs(10)));
    let cli = Cli::try_parse_from(["loadgen", "tcp", "10.0.0.1:9"]).unwrap();
    let Command::Client(c) = cli.command else {
        panic!()
    };
    assert!(matches!(c.spec(), Err(Error::RemoteTarget(_))));
    assert!(
        Cli::try_parse_from([
            "loadgen",
            "http1",
            "http://127.0.0.1:9/",
            "--rate",
            "5",
            "--closed"
        ])
        .is_err()
    );
}
