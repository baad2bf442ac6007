//! A structural scan of a JSON object's top level: where each member's value starts and
//! ends, without decoding anything. Used on whole upstream answers, where the relay needs
//! one small member (`usage`) and the presence of a few others, and a full parse of the
//! rest (the answer text) would cost most of the request's CPU.
//!
//! The scan checks structure (strings, nesting, separators), not the grammar of numbers
//! and literals nor control characters inside strings (the body is forwarded as the
//! upstream sent it, as any proxy would); anything it does not recognise yields `None`,
//! and the caller falls back to serde, which reports the error precisely. The same scan
//! walks the messages of a client's request, which serde has already checked.

use memchr::memchr2;

/// Calls `f(key, raw value)` for each member of the JSON object `body`, in order, keys
/// without their quotes and undecoded (a key with an escape comes escaped). `None` when
/// `body` is not one whole object; `f` may have seen some members by then.
pub(crate) fn for_each_member<'a>(
    body: &'a [u8],
    mut f: impl FnMut(&'a [u8], &'a [u8]),
) -> Option<()> {
    let mut s = Scanner { b: body, i: 0 };
    s.ws();
    s.object(0, &mut f)?;
    s.ws();
    (s.i == body.len()).then_some(())
}

/// What [`for_each_object`] reports, in document order.
pub(crate) enum ObjectEvent<'a> {
    /// A member of the current element: key (as in [`for_each_member`]) and raw value.
    Member(&'a [u8], &'a [u8]),
    /// The current element ended.
    End,
}

/// Walks a JSON array of objects in one pass, calling `f` for each member of each
/// element and at each element's end; `f` answering `None` to an `End` stops the walk.
/// `None` when `body` is not one whole array of objects or `f` stopped it.
pub(crate) fn for_each_object<'a>(
    body: &'a [u8],
    mut f: impl FnMut(ObjectEvent<'a>) -> Option<()>,
) -> Option<()> {
    let mut s = Scanner { b: body, i: 0 };
    s.ws();
    s.array(0, &mut |s, depth| {
        s.object(depth, &mut |key, value| {
            let _ = f(ObjectEvent::Member(key, value));
        })?;
        f(ObjectEvent::End)
    })?;
    s.ws();
    (s.i == body.len()).then_some(())
}

/// The members of a JSON object as `(key, raw value)` pairs (see [`for_each_member`]).
#[cfg(test)]
pub(crate) fn top_level_members(body: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut members = Vec::new();
    for_each_member(body, |k, v| members.push((k, v)))?;
    Some(members)
}

/// Deepest nesting the scan follows (serde_json's own limit is 128).
const MAX_DEPTH: usize = 128;

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    /// A string, opening quote at `i`; leaves `i` after the closing quote.
    fn string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            let rest = self.b.get(self.i..)?;
            let at = memchr2(b'"', b'\\', rest)?;
            self.i += at + 1;
            if rest[at] == b'"' {
                return Some(());
            }
            // A backslash: skip the escaped character (a `\uXXXX` needs no more care,
            // its hex digits cannot be a quote or a backslash).
            self.next()?;
        }
    }

    /// The opening bracket of a container at `i`; `true` when the container is empty
    /// (and then consumed whole).
    fn open(&mut self, open: u8, close: u8) -> Option<bool> {
        self.eat(open)?;
        self.ws();
        let empty = self.peek() == Some(close);
        if empty {
            self.i += 1;
        }
        Some(empty)
    }

    /// After a member or element: `true` on a comma (another follows), `false` on the
    /// closing bracket, `None` on anything else.
    fn more(&mut self, close: u8) -> Option<bool> {
        self.ws();
        match self.next()? {
            b',' => Some(true),
            c if c == close => Some(false),
            _ => None,
        }
    }

    /// An object at `i`, calling `f(key, raw value)` for each member.
    fn object(&mut self, depth: usize, f: &mut impl FnMut(&'a [u8], &'a [u8])) -> Option<()> {
        let b = self.b;
        if self.open(b'{', b'}')? {
            return Some(());
        }
        loop {
            self.ws();
            let key_start = self.i;
            self.string()?;
            let key = &b[key_start + 1..self.i - 1];
            self.ws();
            self.eat(b':')?;
            self.ws();
            let value_start = self.i;
            self.value(depth + 1)?;
            f(key, &b[value_start..self.i]);
            if !self.more(b'}')? {
                return Some(());
            }
        }
    }

    /// An array at `i`; `element(scanner, depth)` scans each element.
    fn array(
        &mut self,
        depth: usize,
        element: &mut impl FnMut(&mut Self, usize) -> Option<()>,
    ) -> Option<()> {
        if self.open(b'[', b']')? {
            return Some(());
        }
        loop {
            self.ws();
            element(self, depth + 1)?;
            if !self.more(b']')? {
                return Some(());
            }
        }
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string(),
            b'{' => self.object(depth, &mut |_, _| {}),
            b'[' => self.array(depth, &mut |s, depth| s.value(depth)),
            _ => {
                let start = self.i;
                while let Some(b'0'..=b'9' | b'a'..=b'z' | b'.' | b'+' | b'-' | b'E') = self.peek()
                {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(body: &str) -> Option<Vec<(String, String)>> {
        top_level_members(body.as_bytes()).map(|m| {
            m.into_iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect()
        })
    }

    #[test]
    fn finds_members_and_their_raw_values() {
        let body = r#" {"id":"x","choices":[{"message":{"content":"a \"usage\": {} \\"}}],
            "usage" : {"prompt_tokens":3,"completion_tokens":5}, "n": -1.5e3, "ok": true, "z": null } "#;
        let m = keys(body).unwrap();
        let names: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["id", "choices", "usage", "n", "ok", "z"]);
        assert_eq!(m[2].1, r#"{"prompt_tokens":3,"completion_tokens":5}"#);
        assert_eq!(m[3].1, "-1.5e3");
        assert_eq!(m[5].1, "null");
        assert_eq!(keys("{}").unwrap(), vec![]);
    }

    #[test]
    fn refuses_what_is_not_a_whole_object() {
        for bad in [
            "",
            "not json",
            "[1]",
            r#"{"a":1"#,
            r#"{"a":1}x"#,
            r#"{"a":[1,2}"#,
            r#"{"a" 1}"#,
            r#"{"a":}"#,
            r#"{"a":"unterminated}"#,
            r#"{a:1}"#,
            r#"{"a":1,}"#,
        ] {
            assert!(keys(bad).is_none(), "accepted {bad:?}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(keys(&deep).is_none());
    }

    #[test]
    fn agrees_with_serde_on_valid_objects() {
        let body = r#"{"a":{"b":[1,{"c":"\u0022}"}]},"d":"\\","e":[]}"#;
        let ours = keys(body).unwrap();
        let theirs: indexmap::IndexMap<String, Box<serde_json::value::RawValue>> =
            serde_json::from_str(body).unwrap();
        assert_eq!(ours.len(), theirs.len());
        for ((k, v), (tk, tv)) in ours.iter().zip(theirs.iter()) {
            assert_eq!(k, tk);
            assert_eq!(v, tv.get());
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            (-1e9f64..1e9).prop_map(|f| serde_json::json!(f)),
            "\\PC{0,12}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("\\PC{0,6}", inner, 0..5)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// On any serialised object, compact or pretty, the scan finds exactly the
        /// members serde finds, with the same raw values; and it never panics on bytes.
        #[test]
        fn matches_serde_on_any_object(
            members in proptest::collection::btree_map("\\PC{0,8}", json_value(), 0..6),
            pretty in proptest::bool::ANY,
        ) {
            let object = serde_json::Value::Object(members.into_iter().collect());
            let body = if pretty {
                serde_json::to_string_pretty(&object).unwrap()
            } else {
                serde_json::to_string(&object).unwrap()
            };
            let ours = top_level_members(body.as_bytes()).unwrap();
            let theirs: indexmap::IndexMap<String, Box<serde_json::value::RawValue>> =
                serde_json::from_str(&body).unwrap();
            proptest::prop_assert_eq!(ours.len(), theirs.len());
            for ((_, v), (_, tv)) in ours.iter().zip(theirs.iter()) {
                proptest::prop_assert_eq!(*v, tv.get().as_bytes());
            }
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = top_level_members(&bytes);
        }
    }
}
