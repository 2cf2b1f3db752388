//! HTTP path parsing: `/<process>/<action&k=v...>?query`, as the API's process routes read it.

use std::collections::HashMap;

use ferrobeam::api::{ProcessAction, process_action, split_segment};
use ferrobeam::message::{Hashpath, Id};
use ferrobeam::node::NodeError;

/// The path and query of a request, taken apart the way `GET /{process}/{action}` does: the
/// process id, the HyperBEAM `&k=v` segment parser and the action parser.
pub fn http_path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = text.split_once('?').unwrap_or((text, ""));
    // The query as a plain `k=v&...` map (axum's `Query` also percent-decodes; the parsers
    // below see what it hands over).
    let query: HashMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let path = path.strip_prefix('/').unwrap_or(path);
    let (process, action) = path.split_once('/').unwrap_or((path, ""));

    // Ids and hashpaths: parse only the canonical text, and print it back unchanged.
    if let Ok(id) = process.parse::<Id>() {
        assert_eq!(id.to_string(), process);
    }
    if let Ok(hashpath) = process.parse::<Hashpath>() {
        assert_eq!(hashpath.to_string(), process);
    }

    let (name, keys) = split_segment(action);
    assert_eq!(Some(name), action.split('&').next());
    assert!(!name.contains('&'));
    for part in action.split('&').skip(1) {
        if let Some((key, _)) = part.split_once('=') {
            assert!(keys.contains_key(&key.to_ascii_lowercase()), "{key:?} lost");
        }
    }
    for (key, value) in &keys {
        assert_eq!(key, &key.to_ascii_lowercase());
        assert!(!key.contains('&') && !value.contains('&'));
    }

    let mut merged = query.clone();
    merged.extend(keys);
    let number = |key: &str| merged.get(key).map(|v| v.parse::<u64>());
    match process_action(action, query) {
        Ok(ProcessAction::Slot) => assert_eq!(name, "slot"),
        Ok(ProcessAction::Now) => assert_eq!(name, "now"),
        Ok(ProcessAction::Process) => assert_eq!(name, "process"),
        Ok(ProcessAction::Compute { slot }) => {
            assert_eq!(name, "compute");
            assert_eq!(number("slot"), Some(Ok(slot)));
        }
        Ok(ProcessAction::Schedule { from, to }) => {
            assert_eq!(name, "schedule");
            assert_eq!(number("from").unwrap_or(Ok(0)), Ok(from));
            assert_eq!(number("to").transpose(), Ok(to));
        }
        Err(NodeError::NotFound(_)) => {
            assert!(!matches!(
                name,
                "slot" | "now" | "process" | "compute" | "schedule"
            ));
        }
        Err(NodeError::BadRequest(_)) => {
            let bad = |key: &str| matches!(number(key), Some(Err(_)));
            match name {
                "compute" => assert!(number("slot").is_none() || bad("slot")),
                "schedule" => assert!(bad("from") || bad("to")),
                other => panic!("BadRequest for action {other:?}"),
            }
        }
        Err(other) => panic!("unexpected error {other:?}"),
    }
}
