//! JSON written by hand where serde_json's serializer costs too much on a hot path
//! (the session token's claims, the granted answer, webhook records): the same
//! bytes serde_json writes, which each caller's tests hold equal.

/// Whether serde_json writes `s` inside quotes as it is: it escapes only `"`, `\`
/// and the control characters below U+0020.
pub fn needs_no_escape(s: &str) -> bool {
    s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// `s` as a JSON string, quotes included, as serde_json writes it: as it is when
/// nothing in it needs escaping (ids and names, the usual case), else escaped by
/// serde_json itself.
pub fn push_str(out: &mut String, s: &str) {
    if needs_no_escape(s) {
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    // Writing a `str` into a `Vec` cannot fail, and serde_json writes UTF-8.
    let escaped = serde_json::to_string(s).unwrap_or_else(|_| "null".to_owned());
    out.push_str(&escaped);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        for s in [
            "",
            "plain-id_42",
            "with \"quotes\"",
            "back\\slash",
            "line\nbreak\ttab\u{1}",
            "\u{7f} DEL, \u{2028} and é stay",
            "</script>",
        ] {
            let mut out = String::new();
            push_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
            assert_eq!(needs_no_escape(s), out.len() == s.len() + 2, "{s:?}");
        }
    }
}
