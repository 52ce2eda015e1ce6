//! Field-level checks of SPIFFE ID parts, so a config error can name the one field that is
//! wrong (`workloads[3].serviceAccount: ...`) rather than a whole assembled URI.
//!
//! The identity type itself is `hbone::identity::Identity`; these checks accept exactly
//! what it accepts (SPIFFE-ID spec §2: trust domain `[a-z0-9._-]+`; path segments
//! `[A-Za-z0-9._-]+`, not `.` or `..`), so a part that passes here builds an `Identity`.

/// Checks a trust domain.
pub fn check_trust_domain(td: &str) -> Result<(), String> {
    let ok = !td.is_empty()
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{td:?} is not a valid SPIFFE trust domain (lowercase letters, digits, '.', '-', '_')"
        ))
    }
}

/// Checks one path segment (namespace or service account).
pub fn check_segment(seg: &str) -> Result<(), String> {
    let ok = !seg.is_empty()
        && seg != "."
        && seg != ".."
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{seg:?} is not a valid SPIFFE path segment (letters, digits, '.', '-', '_'; not empty, '.' or '..')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn agrees_with_hbone_identity() {
        for td in ["cluster.local", "a_b-c.9", "", "Cluster", "td:1", "a/b"] {
            assert_eq!(
                check_trust_domain(td).is_ok(),
                Identity::new(td, "ns", "sa").is_ok(),
                "{td:?}"
            );
        }
        for seg in [
            "default",
            "Bookinfo_1.x-y",
            "",
            ".",
            "..",
            "a b",
            "a/b",
            "ä",
        ] {
            assert_eq!(
                check_segment(seg).is_ok(),
                Identity::new("td", seg, "sa").is_ok(),
                "{seg:?}"
            );
        }
    }
}
