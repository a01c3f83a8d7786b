//! Key and value rules (Dongting's DtKV rules, so its users feel at home).
//!
//! A key is a path of segments joined by `.` (`app.db.url`). The root directory is the empty
//! key `""`, accepted only where the operation makes sense on the root (get and list).
//! The same functions run in the client (to fail fast, without a round trip) and in the state
//! machine (because a client cannot be trusted), so both give the same error.

use serde::{Deserialize, Serialize};

use crate::config::KvConfig;
use crate::error::KvError;

/// The separator between the segments of a key.
pub const KEY_SEPARATOR: u8 = b'.';

/// Why a key was refused. Stable: clients match on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyProblem {
    /// The empty key (the root) where a real key is needed.
    Empty,
    /// Longer than `max_key_size_bytes`.
    TooLong,
    /// Starts with `.`.
    LeadingSeparator,
    /// Ends with `.`.
    TrailingSeparator,
    /// Contains `..` (an empty segment).
    EmptySegment,
    /// Contains a whitespace or control character.
    Whitespace,
    /// Longer than `max_key_size_bytes`, with both figures (replaces
    /// `TooLong`, kept for the wire contract).
    LongerThan {
        /// The key's length.
        size_bytes: usize,
        /// The configured maximum.
        max_bytes: usize,
    },
}

impl std::fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let KeyProblem::LongerThan { size_bytes, max_bytes } = self {
            return write!(f, "the key is {size_bytes} bytes, more than the maximum {max_bytes} bytes");
        }
        f.write_str(match self {
            KeyProblem::Empty => "the key is empty (the root is only valid for get and list)",
            KeyProblem::TooLong => "the key is longer than the configured maximum",
            KeyProblem::LeadingSeparator => "the key starts with '.'",
            KeyProblem::TrailingSeparator => "the key ends with '.'",
            KeyProblem::EmptySegment => "the key has an empty segment ('..')",
            KeyProblem::Whitespace => "the key contains whitespace or a control character",
            KeyProblem::LongerThan { .. } => unreachable!("written above"),
        })
    }
}

/// Checks `key` against the rules without allocating; the caller turns the problem into an
/// error naming the key.
pub fn check_key(key: &str, max_key_size_bytes: usize) -> Result<(), KeyProblem> {
    let bytes = key.as_bytes();
    if bytes.is_empty() {
        return Err(KeyProblem::Empty);
    }
    if bytes.len() > max_key_size_bytes {
        return Err(KeyProblem::LongerThan { size_bytes: key.len(), max_bytes: max_key_size_bytes });
    }
    if bytes[0] == KEY_SEPARATOR {
        return Err(KeyProblem::LeadingSeparator);
    }
    if bytes[bytes.len() - 1] == KEY_SEPARATOR {
        return Err(KeyProblem::TrailingSeparator);
    }
    let mut previous_was_separator = false;
    for &byte in bytes {
        // ASCII whitespace and control characters; multi-byte UTF-8 never has a byte < 0x80.
        if byte <= b' ' || byte == 0x7f {
            return Err(KeyProblem::Whitespace);
        }
        let is_separator = byte == KEY_SEPARATOR;
        if is_separator && previous_was_separator {
            return Err(KeyProblem::EmptySegment);
        }
        previous_was_separator = is_separator;
    }
    // Unicode whitespace beyond ASCII (e.g. U+00A0, U+3000) is rare; check only when present.
    if !key.is_ascii() && key.chars().any(char::is_whitespace) {
        return Err(KeyProblem::Whitespace);
    }
    Ok(())
}

/// Validates a key that names a node (never the root).
pub fn validate_key(key: &str, config: &KvConfig) -> Result<(), KvError> {
    check_key(key, config.max_key_size_bytes)
        .map_err(|problem| KvError::InvalidKey { key: key.to_owned(), problem })
}

/// Validates a key that may also be the root `""` (get, list, watch).
pub fn validate_key_or_root(key: &str, config: &KvConfig) -> Result<(), KvError> {
    if key.is_empty() {
        return Ok(());
    }
    validate_key(key, config)
}

/// Validates a value for `key`: non-empty and at most `max_value_size_bytes`.
pub fn validate_value(key: &str, value: &[u8], config: &KvConfig) -> Result<(), KvError> {
    if value.is_empty() {
        return Err(KvError::EmptyValue { key: key.to_owned() });
    }
    if value.len() > config.max_value_size_bytes {
        return Err(KvError::ValueTooLarge {
            key: key.to_owned(),
            size_bytes: value.len(),
            max_bytes: config.max_value_size_bytes,
        });
    }
    Ok(())
}

/// The namespace tarn keeps for itself (the replicated peer directory lives under
/// `_tarn.peers`). Clients may read it but never write it: a forged peer address there
/// can cut a cluster in pieces, so `Request::validate_from_client` refuses every client
/// write that touches it, and only system requests (client id 0) proposed by a server
/// write it.
pub const RESERVED_NAMESPACE: &str = "_tarn";

/// True when `key` is [`RESERVED_NAMESPACE`] itself or lies below it (`_tarn.peers.3`, but
/// not `_tarnish`).
pub fn is_reserved(key: &str) -> bool {
    is_in_subtree(key, RESERVED_NAMESPACE)
}

/// The parent of a valid key: `"a.b.c"` → `"a.b"`, `"a"` → `""` (the root).
pub fn parent_key(key: &str) -> &str {
    match key.rfind('.') {
        Some(at) => &key[..at],
        None => "",
    }
}

/// The last segment of a valid key: `"a.b.c"` → `"c"`.
pub fn last_segment(key: &str) -> &str {
    match key.rfind('.') {
        Some(at) => &key[at + 1..],
        None => key,
    }
}

/// Joins a directory key and a child segment.
pub fn join_key(dir: &str, segment: &str) -> String {
    if dir.is_empty() {
        segment.to_owned()
    } else {
        let mut key = String::with_capacity(dir.len() + 1 + segment.len());
        key.push_str(dir);
        key.push('.');
        key.push_str(segment);
        key
    }
}

/// True when `key` is `dir` itself or lies in its subtree (the root contains everything).
pub fn is_in_subtree(key: &str, dir: &str) -> bool {
    dir.is_empty()
        || (key.len() >= dir.len()
            && key.starts_with(dir)
            && (key.len() == dir.len() || key.as_bytes()[dir.len()] == KEY_SEPARATOR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dongting_style_keys() {
        for key in ["a", "app.db.url", "x-1_2:3", "é.ü", "a.b.c.d.e.f"] {
            assert_eq!(check_key(key, 8192), Ok(()), "{key}");
        }
    }

    #[test]
    fn refuses_each_rule_with_its_problem() {
        let cases = [
            ("", KeyProblem::Empty),
            (".a", KeyProblem::LeadingSeparator),
            ("a.", KeyProblem::TrailingSeparator),
            (".", KeyProblem::LeadingSeparator),
            ("a..b", KeyProblem::EmptySegment),
            ("a b", KeyProblem::Whitespace),
            ("a\tb", KeyProblem::Whitespace),
            ("a\nb", KeyProblem::Whitespace),
            ("a\u{0}b", KeyProblem::Whitespace),
            ("a\u{3000}b", KeyProblem::Whitespace),
        ];
        for (key, problem) in cases {
            assert_eq!(check_key(key, 8192), Err(problem), "{key:?}");
        }
        assert_eq!(check_key(&"a".repeat(9), 8), Err(KeyProblem::LongerThan { size_bytes: 9, max_bytes: 8 }));
        assert_eq!(check_key(&"a".repeat(8), 8), Ok(()));
    }

    #[test]
    fn validate_names_the_key_and_allows_root_only_where_asked() {
        let config = KvConfig::default();
        let err = validate_key("a..b", &config).unwrap_err();
        assert_eq!(err, KvError::InvalidKey { key: "a..b".into(), problem: KeyProblem::EmptySegment });
        assert!(err.to_string().contains("a..b"));
        assert!(validate_key("", &config).is_err());
        assert!(validate_key_or_root("", &config).is_ok());
    }

    #[test]
    fn values_are_non_empty_and_bounded() {
        let config = KvConfig { max_value_size_bytes: 4, ..KvConfig::default() };
        assert!(matches!(validate_value("k", b"", &config), Err(KvError::EmptyValue { .. })));
        assert!(validate_value("k", b"abcd", &config).is_ok());
        assert!(matches!(
            validate_value("k", b"abcde", &config),
            Err(KvError::ValueTooLarge { size_bytes: 5, max_bytes: 4, .. })
        ));
    }

    #[test]
    fn path_helpers() {
        assert_eq!(parent_key("a.b.c"), "a.b");
        assert_eq!(parent_key("a"), "");
        assert_eq!(last_segment("a.b.c"), "c");
        assert_eq!(join_key("", "a"), "a");
        assert_eq!(join_key("a.b", "c"), "a.b.c");
        assert!(is_in_subtree("a.b", "a"));
        assert!(is_in_subtree("a", "a"));
        assert!(is_in_subtree("a", ""));
        assert!(!is_in_subtree("ab", "a"));
        assert!(!is_in_subtree("a", "a.b"));
    }

    #[test]
    fn reserved_namespace_is_the_tarn_subtree_only() {
        for key in ["_tarn", "_tarn.peers", "_tarn.peers.3"] {
            assert!(is_reserved(key), "{key}");
        }
        for key in ["", "_tarnish", "app._tarn", "tarn", "_tar"] {
            assert!(!is_reserved(key), "{key}");
        }
    }
}
