//! Kubernetes label syntax, checked where a DestinationRule names labels (subsets,
//! `failoverPriority`).

/// A Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a name of at most
/// 63 characters, alphanumeric at both ends, with `-`, `_` and `.` inside.
pub fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let dns = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !dns {
            return Err(format!(
                "{key:?}: the prefix before '/' must be a DNS subdomain (lower case)"
            ));
        }
    }
    if name.is_empty() {
        return Err(format!("{key:?}: the name part is empty"));
    }
    label_value(name).map_err(|_| {
        format!(
            "{key:?}: a label name is at most 63 characters, alphanumeric at both ends, with '-', '_' or '.' inside"
        )
    })
}

/// A Kubernetes label value: empty, or at most 63 characters, alphanumeric at both ends,
/// with `-`, `_` and `.` inside.
pub fn label_value(v: &str) -> Result<(), String> {
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    let ok = v.is_empty()
        || (v.len() <= 63
            && v.bytes().all(|b| alnum(b) || b"-_.".contains(&b))
            && v.bytes().next().is_some_and(alnum)
            && v.bytes().last().is_some_and(alnum));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{v:?}: a label value is at most 63 characters, alphanumeric at both ends, with '-', '_' or '.' inside"
        ))
    }
}
