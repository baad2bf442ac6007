//! Upstream URLs parsed once per thread: a channel's URL is the same string on every
//! request, and `http::Uri` parsing costs about 1,200 instructions per request (a tenth of
//! the relay's own work on a small answer). A hit costs a hash of the string and a clone
//! of the parsed parts (reference counts).

use std::cell::RefCell;
use std::collections::HashMap;

use http::Uri;

/// Entries per thread before the cache starts over (URLs come from the configuration,
/// plus model names for layouts that put the model in the path).
const CAPACITY: usize = 256;

thread_local! {
    static URIS: RefCell<HashMap<String, Uri, foldhash::fast::RandomState>> =
        RefCell::new(HashMap::default());
}

/// `url` parsed, from this thread's cache when it was parsed before.
pub(crate) fn parse(url: String) -> Result<Uri, http::uri::InvalidUri> {
    let cached = URIS.with(|cache| cache.borrow().get(&url).cloned());
    if let Some(uri) = cached {
        return Ok(uri);
    }
    let uri = Uri::try_from(url.as_str())?;
    URIS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() >= CAPACITY {
            cache.clear();
        }
        cache.insert(url, uri.clone());
    });
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_once_and_answers_the_same_uri() {
        let url = "https://api.example.com/v1/chat/completions";
        let a = parse(url.to_owned()).unwrap();
        let b = parse(url.to_owned()).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.host(), Some("api.example.com"));
        assert_eq!(b.path(), "/v1/chat/completions");
        assert!(URIS.with(|c| c.borrow().contains_key(url)));
    }

    #[test]
    fn refuses_what_is_not_a_uri_and_stays_bounded() {
        assert!(parse("http://exa mple.com/".to_owned()).is_err());
        for i in 0..CAPACITY * 2 {
            parse(format!("http://h{i}.example/v1")).unwrap();
        }
        assert!(URIS.with(|c| c.borrow().len()) <= CAPACITY);
    }
}
