//! A gRPC provider's query parameter edits (`ok_response.query_parameters_to_set` and
//! `_to_remove`) on the request's path and query.

/// `path_and_query` with the query's parameters `set` (the first of a name takes the
/// value, later ones go; a name not there is added at the end) and `remove`d (every one of
/// the name). Names are compared decoded on both sides (so `to%6Ben` is `token`); what the
/// provider sends is written as sent where a query may hold it (Envoy expects providers to
/// send it encoded, and writes it verbatim), with only the bytes a query cannot hold, and
/// `&`, `#` (and `=` in a name), percent-encoded; parameters not named stay as the client
/// wrote them, in their order (Envoy re-writes and sorts them all).
pub fn edit_query(path_and_query: &str, set: &[(String, String)], remove: &[String]) -> String {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let set: Vec<(String, &str, &str)> = set
        .iter()
        .map(|(k, v)| (decode(k), k.as_str(), v.as_str()))
        .collect();
    let remove: Vec<String> = remove.iter().map(|r| decode(r)).collect();
    let mut out: Vec<String> = Vec::new();
    let mut done = vec![false; set.len()];
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let key = decode(kv.split_once('=').map_or(kv, |(k, _)| k));
        if remove.contains(&key) {
            continue;
        }
        match set.iter().position(|(k, ..)| *k == key) {
            Some(i) if done[i] => {}
            Some(i) => {
                done[i] = true;
                out.push(format!(
                    "{}={}",
                    encode(set[i].1, true),
                    encode(set[i].2, false)
                ));
            }
            None => out.push(kv.to_string()),
        }
    }
    for (i, (key, k, v)) in set.iter().enumerate() {
        if !done[i] && !remove.contains(key) {
            out.push(format!("{}={}", encode(k, true), encode(v, false)));
        }
    }
    if out.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", out.join("&"))
    }
}

/// `s` as a query may hold it: RFC 3986's query characters and `%XX` escapes kept, the rest
/// percent-encoded, and `&`, `#` (and `=` in a name) always.
fn encode(s: &str, name: bool) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(b.len());
    for (i, &c) in b.iter().enumerate() {
        let escape = c == b'%'
            && b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
        let keep = c.is_ascii_alphanumeric()
            || b"-._~!$'()*+,;:@/?".contains(&c)
            || (c == b'=' && !name)
            || escape;
        if keep {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// Percent-decoding (a malformed escape stays as written).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
