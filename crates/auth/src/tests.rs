//! Configuration tests; the service end to end is in `tests/end_to_end.rs`.

use super::*;

#[test]
fn config_defaults_match_the_issue() {
    let cfg: AuthConfig = serde_json::from_str("{}").expect("empty config");
    assert_eq!(cfg, AuthConfig::default());
    assert_eq!(cfg.code_ttl_secs, 600);
    assert_eq!(cfg.max_code_attempts, 5);
    assert_eq!(cfg.resend_interval_secs, 30);
    assert_eq!(cfg.max_codes_per_hour, 5);
    assert_eq!(cfg.token_ttl_days, 90);
    assert_eq!(cfg.provider, ProviderConfig::File { path: None });
    assert_eq!(cfg.token_ttl(), Duration::from_secs(90 * 86_400));
    assert_eq!(cfg.call_timeout(), CALL_TIMEOUT);
    cfg.validate().expect("defaults are valid");
}

#[test]
fn config_reads_partial_settings() {
    let cfg: AuthConfig = serde_json::from_str(
        r#"{"max_codes_per_hour": 3,
            "provider": {"kind": "webhook", "url": "http://gw/send", "timeout_ms": 30000}}"#,
    )
    .expect("config");
    assert_eq!(cfg.max_codes_per_hour, 3);
    assert_eq!(cfg.code_ttl_secs, 600);
    assert_eq!(
        cfg.provider,
        ProviderConfig::Webhook {
            url: "http://gw/send".into(),
            timeout_ms: 30_000
        }
    );
    assert_eq!(cfg.call_timeout(), Duration::from_secs(32));
}

#[test]
fn validate_rejects_zeros() {
    let zeroed: [fn(&mut AuthConfig); 5] = [
        |c| c.code_ttl_secs = 0,
        |c| c.max_code_attempts = 0,
        |c| c.max_codes_per_hour = 0,
        |c| c.token_ttl_days = 0,
        |c| c.max_deliveries_in_flight = 0,
    ];
    for zero in zeroed {
        let mut cfg = AuthConfig::default();
        zero(&mut cfg);
        assert!(
            matches!(cfg.validate(), Err(AuthError::InvalidConfig(_))),
            "{cfg:?}"
        );
    }
}

#[test]
fn now_is_after_2020() {
    assert!(now_ms() > 1_577_836_800_000);
}
