//! Where a region may be split: [`split_boundary`] moves a proposed split key so that no
//! boundary falls inside a Redis hash tag.
//!
//! Redis Cluster keeps the keys of one hash tag (`{user1000}.following`,
//! `{user1000}.followers`) in one slot so that multi-key commands on them work; RaftKV
//! keeps them in one region for the same reason. Both split pickers (by size, in the state
//! machine, and by load, in the store) pass their key through [`split_boundary`].

/// The split key to use in place of `key` (a key a split picker chose), so that a split
/// never falls inside a Redis hash tag.
///
/// Redis's rule for the tag: the first `{` of the key and the first `}` after it, with at
/// least one byte between them (`foo{}{bar}` has no tag: the first `{` is followed at once by
/// a `}`). When the key has a tag, the result is the key cut just after that `}`: every key
/// that shares the text up to and including the tag starts with the result, so a split
/// there puts all of them on its right side. Otherwise the key is returned unchanged.
///
/// The result is never greater than `key` (it is a prefix of it); the caller still checks
/// that it lies strictly inside the region (a prefix may fall at or before its start).
pub fn split_boundary(key: &[u8]) -> Vec<u8> {
    let key = user_key(key);
    key[..hash_tag_end(key).unwrap_or(key.len())].to_vec()
}

/// The user key a stored key belongs to.
///
/// HASH FIELDS — the one place to change when hashes are built: a hash will store each
/// field as its own key, the user key followed by an encoded field sub-key, and a split must
/// never separate the fields of one hash. Once that encoding exists, this function strips
/// the sub-key, and [`split_boundary`] (which applies it first) then truncates a field's key
/// to its user key (and further, to the user key's hash tag). Today every stored key is a
/// user key.
fn user_key(key: &[u8]) -> &[u8] {
    key
}

/// The length of `key` up to and including its hash tag's closing `}`, if it has a tag
/// (Redis's rule, see [`split_boundary`]).
fn hash_tag_end(key: &[u8]) -> Option<usize> {
    let open = key.iter().position(|&b| b == b'{')?;
    let close = open + 1 + key[open + 1..].iter().position(|&b| b == b'}')?;
    if close == open + 1 {
        // `{}`: an empty tag is no tag, and Redis looks no further.
        return None;
    }
    Some(close + 1)
}

#[cfg(test)]
mod tests {
    use super::split_boundary;

    fn boundary(key: &str) -> String {
        String::from_utf8(split_boundary(key.as_bytes())).expect("ascii in, ascii out")
    }

    #[test]
    fn a_key_with_a_hash_tag_is_cut_after_the_tag() {
        assert_eq!(boundary("{user1000}.following"), "{user1000}");
        assert_eq!(boundary("{user1000}.followers"), "{user1000}");
        assert_eq!(boundary("profile:{user1000}:name"), "profile:{user1000}");
        assert_eq!(boundary("{a}"), "{a}");
        // The first `{` and the first `}` after it: later braces are part of the rest.
        assert_eq!(boundary("foo{bar}{zap}"), "foo{bar}");
        assert_eq!(boundary("foo{{bar}}zap"), "foo{{bar}");
        assert_eq!(boundary("a}b{c}d"), "a}b{c}");
    }

    #[test]
    fn a_key_without_a_hash_tag_is_unchanged() {
        // An empty tag is no tag (Redis does not look for another one).
        assert_eq!(boundary("foo{}{bar}"), "foo{}{bar}");
        assert_eq!(boundary("{}"), "{}");
        assert_eq!(boundary("{"), "{");
        assert_eq!(boundary("}"), "}");
        assert_eq!(boundary("}{"), "}{");
        assert_eq!(boundary("foo{bar"), "foo{bar");
        assert_eq!(boundary("user:1000"), "user:1000");
        assert_eq!(boundary(""), "");
        assert_eq!(split_boundary(b"\xff{\x00}\x01"), b"\xff{\x00}".to_vec());
    }

    #[test]
    fn every_key_of_one_tag_falls_on_the_right_of_the_boundary() {
        let at = split_boundary(b"{t}5");
        for key in [&b"{t}"[..], b"{t}0", b"{t}5", b"{t}\xff\xff"] {
            assert!(key >= at.as_slice(), "{key:?}");
        }
        assert!(&b"{s}9"[..] < at.as_slice());
    }
}
