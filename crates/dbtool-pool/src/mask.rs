//! The one password masker of dbtool: every URL or connection string that
//! is printed anywhere (messages, errors, reports, logs) goes through
//! [`mask_password`] first.
//!
//! This file uses only `std`: the testkit compiles the same file (with
//! `#[path]`) so that test output is masked by the same code without the
//! testkit depending on this crate.

/// `url` with any password replaced by `***`, for logs, errors and output.
///
/// Handles URLs (`postgres://user:secret@host/db`, `?password=secret`) and
/// libpq key/value strings (`host=h password=secret`).
///
/// ```text
/// postgres://app:s3cret@db:5432/forums  ->  postgres://app:***@db:5432/forums
/// rediss://:s3cret@cache:6380           ->  rediss://:***@cache:6380
/// host=db password='a b' user=app       ->  host=db password=*** user=app
/// ```
pub fn mask_password(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest_start = scheme_end + 3;
        let rest = &url[rest_start..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let mut out = String::with_capacity(url.len());
        out.push_str(&url[..rest_start]);
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        let tail = &rest[authority_end..];
        match tail.find('?') {
            Some(q) => {
                out.push_str(&tail[..=q]);
                let params: Vec<String> = tail[q + 1..]
                    .split('&')
                    .map(|p| match p.split_once('=') {
                        Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                        _ => p.to_string(),
                    })
                    .collect();
                out.push_str(&params.join("&"));
            }
            None => out.push_str(tail),
        }
        out
    } else {
        mask_key_value(url)
    }
}

/// Masks `password=...` in a libpq key/value string; the value may be quoted.
fn mask_key_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = find_password_key(rest) {
        let (before, after) = rest.split_at(pos);
        out.push_str(before);
        let eq = after.find('=').unwrap_or(0);
        out.push_str(&after[..=eq]);
        out.push_str("***");
        let value = after[eq + 1..].trim_start();
        let consumed = if let Some(quoted) = value.strip_prefix('\'') {
            // Quoted: up to the closing quote that is not escaped.
            let mut end = quoted.len();
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '\'' if !escaped => {
                        end = i + 1;
                        break;
                    }
                    _ => escaped = false,
                }
            }
            1 + end.min(quoted.len())
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        rest = &value[consumed..];
    }
    out.push_str(rest);
    out
}

/// Where `password` starts as a key (at the start or after whitespace,
/// followed by optional spaces and `=`).
fn find_password_key(s: &str) -> Option<usize> {
    let lower = s.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("password") {
        let at = from + i;
        let starts_word = at == 0 || lower.as_bytes()[at - 1].is_ascii_whitespace();
        let after = lower[at + "password".len()..].trim_start();
        if starts_word && after.starts_with('=') {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_password_hides_url_passwords() {
        assert_eq!(
            mask_password("postgresql://u:p%40ss@h:5/d?sslmode=disable"),
            "postgresql://u:***@h:5/d?sslmode=disable"
        );
        assert_eq!(mask_password("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(mask_password("postgres://h"), "postgres://h");
        assert_eq!(
            mask_password("postgres://u:a@b@h/d"),
            "postgres://u:***@h/d",
            "the last @ ends the user info"
        );
        assert_eq!(
            mask_password("postgres:///d?user=u&password=secret&x=1"),
            "postgres:///d?user=u&password=***&x=1"
        );
    }

    #[test]
    fn mask_password_hides_key_value_passwords() {
        assert_eq!(
            mask_password("host=h password=secret user=u"),
            "host=h password=*** user=u"
        );
        assert_eq!(
            mask_password("password = 'it\\'s secret' dbname=d"),
            "password =*** dbname=d"
        );
        assert_eq!(mask_password("host=h PASSWORD=x"), "host=h PASSWORD=***");
        assert_eq!(mask_password("passwordless=1"), "passwordless=1");
    }

    #[test]
    fn mask_password_hides_redis_passwords() {
        assert_eq!(
            mask_password("rediss://:s3cret@cache:6380"),
            "rediss://:***@cache:6380"
        );
        assert_eq!(
            mask_password("redis://app:s3cret@cache:6379/0"),
            "redis://app:***@cache:6379/0"
        );
    }
}
