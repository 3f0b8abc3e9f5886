//! Syntax rules for names and digests, shared by commands and the API.

use super::DomainError;

/// Namespace names: 4 to 54 characters of `a-z`, `0-9` and `-`, starting and ending with a
/// letter or digit (a DNS label that fits Scaleway's documented bounds).
pub fn namespace_name(name: &str) -> Result<(), DomainError> {
    let ok_len = (4..=54).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = !name.starts_with('-') && !name.ends_with('-');
    if ok_len && ok_chars && ok_ends {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "name",
            "must be 4 to 54 characters of a-z, 0-9 and '-', starting and ending with a letter or digit",
        ))
    }
}

/// Image names follow OCI repository path components: lowercase alphanumeric runs joined by
/// one `.`, `_`, `__` or any number of `-`, components separated by `/`; at most 255 bytes.
pub fn image_name(name: &str) -> Result<(), DomainError> {
    let bad = || {
        DomainError::invalid(
            "name",
            "must be an OCI repository path: lowercase letters and digits, separated by '.', '_', '__' or '-', components joined by '/', at most 255 characters",
        )
    };
    if name.is_empty() || name.len() > 255 {
        return Err(bad());
    }
    for component in name.split('/') {
        if !path_component(component) {
            return Err(bad());
        }
    }
    Ok(())
}

fn path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let dashes = sep.bytes().all(|b| b == b'-');
        if !(sep == "." || sep == "_" || sep == "__" || dashes) {
            return false;
        }
    }
    true
}

/// Tag names per the OCI distribution spec: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn tag_name(name: &str) -> Result<(), DomainError> {
    let bytes = name.as_bytes();
    let first_ok = bytes
        .first()
        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
    let rest_ok = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if first_ok && rest_ok && bytes.len() <= 128 {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "tag",
            "must match [A-Za-z0-9_][A-Za-z0-9._-]{0,127}",
        ))
    }
}

/// Digests we accept: `sha256:` with 64 or `sha512:` with 128 lowercase hex digits.
pub fn digest(field: &'static str, d: &str) -> Result<(), DomainError> {
    let hex_len = match d.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 => Some(hex),
        Some(("sha512", hex)) if hex.len() == 128 => Some(hex),
        _ => None,
    };
    match hex_len {
        Some(hex)
            if hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(DomainError::invalid(
            field,
            format!("`{}` is not a sha256 or sha512 digest", clip(d)),
        )),
    }
}

/// Project and organization ids (`field` names which): 1 to 64 characters of letters, digits
/// and `-` (UUIDs in practice).
pub fn project_id(field: &'static str, id: &str) -> Result<(), DomainError> {
    if !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            "1 to 64 letters, digits or '-'",
        ))
    }
}

/// Image visibilities a client may set (`visibility_unknown` is only ever reported).
pub const VISIBILITIES: [&str; 3] = ["inherit", "public", "private"];

pub fn visibility(v: &str) -> Result<(), DomainError> {
    if VISIBILITIES.contains(&v) {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "visibility",
            "must be one of inherit, public, private",
        ))
    }
}

/// Most characters of a caller's input that an error message repeats.
pub const ECHO_MAX: usize = 64;

/// `text` as an error message may repeat it: its first [`ECHO_MAX`] characters, with `…`
/// when it was longer, so a request cannot make an answer as long as itself.
pub fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    clip_to(text, ECHO_MAX)
}

/// Most characters of an error message an API answers with: whatever a message repeats of
/// a request (a path, an id), the answer stays small.
pub const MESSAGE_MAX: usize = 500;

/// `text`'s first `max` characters, with `…` when it was longer.
pub fn clip_to(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(text),
        Some((end, _)) => std::borrow::Cow::Owned(format!("{}…", &text[..end])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names() {
        for ok in ["team", "my-team-1", "a0b1"] {
            assert!(namespace_name(ok).is_ok(), "{ok}");
        }
        for bad in ["abc", "-team", "team-", "Team", "te_am", &"a".repeat(55)] {
            assert!(namespace_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn image_names() {
        for ok in ["app", "team/app", "a.b", "a__b", "a---b", "x/y/z-1"] {
            assert!(image_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "App", "a..b", "a___b", "/a", "a/", "a//b", "-a", "a-"] {
            assert!(image_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tag_names() {
        assert!(tag_name("v1.2.3-rc_1").is_ok());
        assert!(tag_name("_x").is_ok());
        assert!(tag_name(".x").is_err());
        assert!(tag_name("").is_err());
        assert!(tag_name(&"a".repeat(129)).is_err());
    }

    #[test]
    fn digests() {
        assert!(digest("digest", &format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(digest("digest", &format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(digest("digest", "sha256:abc").is_err());
        assert!(digest("digest", &format!("md5:{}", "a".repeat(64))).is_err());
    }
}
