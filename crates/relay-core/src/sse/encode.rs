use bytes::{BufMut, BytesMut};

/// Append one event to `out`: an optional `event:` line, one `data:` line per line of
/// `data` (split on `\n`, a `\r` before it dropped), and the blank line that ends it.
pub fn encode_event(out: &mut BytesMut, event: Option<&str>, data: &[u8]) {
    out.reserve(data.len() + event.map_or(0, |e| e.len() + 8) + 8);
    if let Some(event) = event {
        out.put_slice(b"event: ");
        out.put_slice(event.as_bytes());
        out.put_u8(b'\n');
    }
    if memchr::memchr(b'\n', data).is_none() {
        out.put_slice(b"data: ");
        out.put_slice(data);
        out.put_u8(b'\n');
    } else {
        for line in data.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            out.put_slice(b"data: ");
            out.put_slice(line);
            out.put_u8(b'\n');
        }
    }
    out.put_u8(b'\n');
}

/// Append a comment line (`: text`), used as a keep-alive.
pub fn encode_comment(out: &mut BytesMut, text: &str) {
    out.put_slice(b": ");
    out.put_slice(text.as_bytes());
    out.put_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_single_and_multi_line() {
        let mut out = BytesMut::new();
        encode_event(&mut out, None, b"{\"a\":1}");
        encode_event(&mut out, Some("ping"), b"one\ntwo");
        encode_comment(&mut out, "keep-alive");
        assert_eq!(
            &out[..],
            b"data: {\"a\":1}\n\nevent: ping\ndata: one\ndata: two\n\n: keep-alive\n\n"
        );
    }
}
