//! Host names: slugs and custom domains, checked before anything is stored.

/// A slug: one DNS label, lowercase letters, digits and inner hyphens, 1-63 chars.
pub fn valid_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A custom domain: at least two labels, each a valid DNS label, a letter in the
/// last one (no IP addresses), at most 253 characters. Returned lowercased.
pub fn normalize_domain(s: &str) -> Option<String> {
    let d = s.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.len() > 253 || d.is_empty() {
        return None;
    }
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() < 2 {
        return None;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !labels.iter().all(|l| label_ok(l)) {
        return None;
    }
    let tld = labels.last()?;
    if !tld.bytes().any(|b| b.is_ascii_lowercase()) {
        return None;
    }
    Some(d)
}

/// A new random slug: `<prefix>-<8 hex>` (prefix cut to a valid label).
pub fn random_slug(prefix: &str) -> String {
    use rand::RngCore;
    let mut b = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let p: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let p = p.trim_matches('-');
    if p.is_empty() {
        hex::encode(b)
    } else {
        format!("{p}-{}", hex::encode(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_domains() {
        assert!(valid_slug("my-app-3"));
        assert!(!valid_slug("-a") && !valid_slug("A") && !valid_slug("a.b") && !valid_slug(""));
        assert_eq!(
            normalize_domain("App.Example.COM."),
            Some("app.example.com".into())
        );
        for bad in [
            "localhost",
            "1.2.3.4",
            "a..b",
            "-a.com",
            "a_b.com",
            "exa mple.com",
            "",
        ] {
            assert_eq!(normalize_domain(bad), None, "{bad}");
        }
        let s = random_slug("ws_abc");
        assert!(valid_slug(&s), "{s}");
        assert!(s.starts_with("ws-abc-"));
    }
}
