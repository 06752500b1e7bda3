//! Secrets kept out of what the host prints. A URL's credentials are
//! masked wherever a URL appears in a log line, an error or a status reply.
//! A leaf: imports nothing of this crate.

/// `url` with the password of its user-info replaced by `***`; a user-info
/// without a `:` (a token, as NATS allows) is masked whole. A URL without
/// credentials is returned unchanged.
pub fn mask_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let masked = match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    format!("{}{masked}{}", &url[..scheme_end], &rest[at..])
}

/// A secret given inline or in a file (the Kubernetes and systemd
/// credential convention; one trailing newline ignored). A file that
/// cannot be read is an error naming `file_key`; its content never
/// appears in one.
pub fn read(
    file_key: &str,
    inline: Option<&str>,
    file: &Option<std::path::PathBuf>,
) -> anyhow::Result<Option<String>> {
    match file {
        None => Ok(inline.map(str::to_string)),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| {
                anyhow::anyhow!(
                    "config key `{file_key}`: cannot read {}: {error}",
                    path.display()
                )
            })?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            Ok(Some(text.strip_suffix('\r').unwrap_or(text).to_string()))
        }
    }
}

/// Every URL in a comma-separated list (NATS takes several), masked.
pub fn mask_urls(urls: &str) -> String {
    urls.split(',').map(mask_url).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_the_password_and_keeps_the_user() {
        assert_eq!(
            mask_url("redis://switchyard:s3cr%40t@cache:6379/0"),
            "redis://switchyard:***@cache:6379/0"
        );
        assert_eq!(
            mask_url("rediss://:pw@cache:6380"),
            "rediss://:***@cache:6380"
        );
    }

    #[test]
    fn masks_a_token_whole() {
        assert_eq!(mask_url("nats://t0ken@nats:4222"), "nats://***@nats:4222");
    }

    #[test]
    fn leaves_urls_without_credentials_alone() {
        for url in [
            "nats://127.0.0.1:4222",
            "memory://",
            "bolt://db:7687/x@y",
            "plain",
        ] {
            assert_eq!(mask_url(url), url);
        }
    }

    #[test]
    fn masks_each_url_of_a_list() {
        assert_eq!(
            mask_urls("nats://a:1@n1:4222,nats://b:2@n2:4222"),
            "nats://a:***@n1:4222,nats://b:***@n2:4222"
        );
    }
}
