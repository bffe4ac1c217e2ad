//! The verifier's error type: everything that stops a comparison from running.
//!
//! Differences between source and target are not errors: they are the
//! [`Report`](crate::Report). An [`Error`] means "could not compare" (exit 2).

/// Why a verification could not run. Messages name the file, URL (password
/// masked), table or run at fault and say what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The SQLite source could not be opened or read.
    #[error("cannot read source {path}: {reason}")]
    Source {
        /// The SQLite file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The target could not be reached (connect or a lost connection).
    #[error("cannot reach target {url}: {source} (is the server up and the URL right?)")]
    Connect {
        /// The target URL with the password masked.
        url: String,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A query on the target failed.
    #[error("query on the target failed while {what}: {source}")]
    Target {
        /// What verify was doing.
        what: String,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A SQLite error while reading the source.
    #[error("reading the source failed while {what}: {source}")]
    Sqlite {
        /// What verify was doing.
        what: String,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// No plan could be found or made (no run record and the source cannot be planned).
    #[error("cannot determine the migration plan: {0}")]
    Plan(String),
    /// The run named with `--watermark` does not exist or has no record.
    #[error("migration run {run} not found in dbtool.runs of the target (list runs with `SELECT id FROM dbtool.runs`, or use --watermark auto)")]
    RunNotFound {
        /// The run asked for.
        run: String,
    },
    /// The reject file could not be read.
    #[error("cannot read reject file {path}: {reason}")]
    Rejects {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A table named with `--tables` is not in the plan.
    #[error("table {0:?} is not in the migration plan (check the name with `dbtool plan`)")]
    UnknownTable(String),
    /// An option has an invalid value.
    #[error("invalid option: {0}")]
    Usage(String),
    /// Writing the report failed.
    #[error("cannot write report {path}: {source}")]
    Report {
        /// The report file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A background task died (a bug: please report it).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn target(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let what = what.into();
        move |source| Error::Target { what, source }
    }

    pub(crate) fn sqlite(what: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> Error {
        let what = what.into();
        move |source| Error::Sqlite { what, source }
    }
}

/// Masks the password of a postgres URL or libpq string for printing.
pub fn mask_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@') {
            let userinfo = &rest[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &rest[at..]
                );
            }
        }
        // Query-string password (`?password=...`).
        return mask_kv(url, '&');
    }
    mask_kv(url, ' ')
}

fn mask_kv(s: &str, sep: char) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, part) in s.split(sep).enumerate() {
        if i > 0 {
            out.push(sep);
        }
        let lower = part.to_ascii_lowercase();
        let key_at = lower.find("password=");
        match key_at {
            Some(k) if k == 0 || lower[..k].ends_with('?') => {
                out.push_str(&part[..k + "password=".len()]);
                out.push_str("***");
            }
            _ => out.push_str(part),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::mask_url;

    #[test]
    fn mask_url_hides_passwords_in_every_form() {
        assert_eq!(
            mask_url("postgres://bob:s3cret@db:5432/app"),
            "postgres://bob:***@db:5432/app"
        );
        assert_eq!(mask_url("postgres://bob@db/app"), "postgres://bob@db/app");
        assert_eq!(
            mask_url("postgres://db/app?user=bob&password=s3cret"),
            "postgres://db/app?user=bob&password=***"
        );
        assert_eq!(
            mask_url("host=db user=bob password=s3cret dbname=app"),
            "host=db user=bob password=*** dbname=app"
        );
    }
}
