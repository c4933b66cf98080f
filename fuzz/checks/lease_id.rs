//! Lease ids as the API receives them: `LeaseId::parse`, the percent-decoding
//! axum applies to `/v1/leases/{*rest}` before the handlers see it, the
//! `…/renew` suffix, and the `?prefix=` query decoding of `GET /v1/leases`.
//! Never panics; what parses is exactly `ROLE/RANDOM` and round-trips.
//!
//! Shared by the fuzz target of the same name and by the corpus replay
//! test (`tests/fuzz_corpora.rs`), which runs every input of
//! `fuzz/corpus/lease_id` in CI.

use lessor::api::{list_query, parse_lease_id};
use lessor::http::serde_urlencoded_pairs;
use lessor::lease::LeaseId;
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};

fn check_id(raw: &str) {
    let parsed = LeaseId::parse(raw);
    assert_eq!(parsed.is_some(), parse_lease_id(raw).is_ok(), "{raw:?}");
    let Some(id) = parsed else { return };
    assert_eq!(id.as_str(), raw);
    let (role, random) = raw.split_once('/').expect("an accepted id has a '/'");
    assert!(!random.contains('/'), "{raw:?}: more than one '/'");
    assert_eq!(id.role(), role);
    assert!(!role.is_empty() && !random.is_empty(), "{raw:?}");
    assert!(role.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'), "{raw:?}");
    assert!(random.bytes().all(|b| b.is_ascii_alphanumeric()), "{raw:?}");
    assert!(!raw.contains(".."));
    assert_eq!(LeaseId::parse(id.as_str()).as_ref(), Some(&id));
    let json = serde_json::to_string(&id).expect("serializes");
    assert_eq!(serde_json::from_str::<LeaseId>(&json).expect("deserializes"), id);
}

/// Runs one input; panics on a finding.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };

    // The id as written, and as axum hands `{*rest}` to the handlers
    // (percent-decoded, '+' left alone), for GET/DELETE and for …/renew.
    check_id(text);
    if let Ok(decoded) = percent_decode_str(text).decode_utf8() {
        check_id(&decoded);
        if let Some(raw_id) = decoded.strip_suffix("/renew") {
            check_id(raw_id);
        }
    }

    // The query string of GET /v1/leases, as given.
    let _ = serde_urlencoded_pairs(text);
    if let Ok(list) = list_query(Some(text)) {
        assert!((1..=lessor::api::MAX_LIST_LIMIT).contains(&list.limit));
    }

    // Any text sent as ?prefix=… (percent-encoded as a client does) comes
    // back unchanged; so does any key=value pair.
    let encoded = utf8_percent_encode(text, NON_ALPHANUMERIC).to_string();
    let query = format!("prefix={encoded}");
    assert_eq!(list_query(Some(&query)).expect("an encoded prefix decodes").prefix, text, "{query:?}");
    let split = text.char_indices().nth(text.chars().count() / 2).map_or(0, |(i, _)| i);
    let (key, value) = text.split_at(split);
    let pair = format!(
        "{}={}",
        utf8_percent_encode(key, NON_ALPHANUMERIC),
        utf8_percent_encode(value, NON_ALPHANUMERIC)
    );
    let pairs = serde_urlencoded_pairs(&pair).expect("an encoded pair decodes");
    assert_eq!(pairs, vec![(key.to_string(), value.to_string())], "{pair:?}");

    // A generated id for a valid role name parses back to the same role.
    if lessor::config::is_valid_name(text) {
        let id = lessor::lease::new_id(text);
        assert_eq!(LeaseId::parse(id.as_str()).as_ref(), Some(&id));
        assert_eq!(id.role(), text);
    }
}
