//! Keeping secrets out of logs, errors and status: URL redaction and
//! scrubbing of known secret values from messages.

/// The URL without credentials: userinfo is dropped for http(s) URLs (the
/// user name of ssh URLs is kept, it is not a secret), and query strings and
/// fragments are dropped everywhere.
pub fn redact_url(url: &str) -> String {
    let cut = url.find(['?', '#']).map_or(url, |i| &url[..i]);
    let Some((scheme, rest)) = cut.split_once("://") else {
        return cut.to_string();
    };
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            if scheme.eq_ignore_ascii_case("ssh") || scheme.eq_ignore_ascii_case("git+ssh") {
                // Keep the user, drop any password.
                let user = userinfo.split(':').next().unwrap_or_default();
                format!("{user}@{host}")
            } else {
                host.to_string()
            }
        }
        None => authority.to_string(),
    };
    format!("{scheme}://{authority}{path}")
}

/// Secret values to scrub from messages.
#[derive(Clone, Default)]
pub struct Secrets(Vec<String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} values)", self.0.len())
    }
}

impl Secrets {
    /// Remember a secret (ignored when too short to scrub safely).
    pub fn add(&mut self, secret: &str) {
        let s = secret.trim();
        if s.len() >= 3 && !self.0.iter().any(|x| x == s) {
            self.0.push(s.to_string());
        }
    }

    /// Replace every known secret in `message` with `***`, and redact the
    /// given URL where it appears.
    pub fn scrub(&self, message: &str, url: &str) -> String {
        let mut out = message.to_string();
        let redacted = redact_url(url);
        if url != redacted {
            out = out.replace(url, &redacted);
        }
        for s in &self.0 {
            out = out.replace(s.as_str(), "***");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(redact_url("https://user:pw@git.example/a.git?token=x#f"), "https://git.example/a.git");
        assert_eq!(redact_url("https://tok@git.example"), "https://git.example");
        assert_eq!(redact_url("ssh://git:pw@host:22/r.git"), "ssh://git@host:22/r.git");
        assert_eq!(redact_url("git@github.com:o/r.git"), "git@github.com:o/r.git");
        assert_eq!(redact_url("/srv/repo"), "/srv/repo");
        assert_eq!(redact_url("file:///srv/repo"), "file:///srv/repo");
    }

    #[test]
    fn scrubbing() {
        let mut s = Secrets::default();
        s.add("hunter22\n");
        s.add("x");
        let msg = "GET https://u:hunter22@h/r failed; Authorization: Bearer hunter22";
        assert_eq!(
            s.scrub(msg, "https://u:hunter22@h/r"),
            "GET https://h/r failed; Authorization: Bearer ***"
        );
    }
}
