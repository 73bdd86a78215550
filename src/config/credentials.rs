//! Where a service's secrets come from: paths in the config (or the
//! environment), never the secrets themselves.

use std::ffi::OsString;
use std::fs;
use std::path::PathBuf;

/// Where a service's secrets come from.
///
/// Only *paths* live in the config, so the config can be committed and shown;
/// secrets are read from the files at fetch time and never logged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Private key file for ssh:// and scp-like upstreams.
    pub ssh_key: Option<PathBuf>,
    /// known_hosts file; when None: /etc/ssh/ssh_known_hosts then ~/.ssh/known_hosts ($HOME).
    pub ssh_known_hosts: Option<PathBuf>,
    /// Username for https; "git" when a token file is given without one.
    pub https_user: Option<String>,
    /// File whose first line (trimmed) is the https password or token.
    pub https_token_file: Option<PathBuf>,
    /// Run instead of `ssh` for ssh upstreams, through the shell
    /// (`ssh_command`, as git's `GIT_SSH_COMMAND`).
    pub ssh_command: Option<String>,
    /// The HTTP proxy for http(s) upstreams (`proxy`), winning over the
    /// environment's `https_proxy`/`http_proxy`; no password in it.
    pub proxy: Option<String>,
    /// File whose first line is `user:password` for the proxy.
    pub proxy_credentials_file: Option<PathBuf>,
}

impl Credentials {
    /// Fill unset fields from env PROVISION_SSH_KEY, PROVISION_SSH_KNOWN_HOSTS,
    /// PROVISION_HTTPS_USER and PROVISION_HTTPS_TOKEN_FILE, so a machine can
    /// supply its secrets' locations without editing the shared config.
    /// Empty variables count as unset.
    pub fn with_env_defaults(mut self) -> Self {
        fill(&mut self.ssh_key, "PROVISION_SSH_KEY", PathBuf::from);
        fill(
            &mut self.ssh_known_hosts,
            "PROVISION_SSH_KNOWN_HOSTS",
            PathBuf::from,
        );
        fill(
            &mut self.https_token_file,
            "PROVISION_HTTPS_TOKEN_FILE",
            PathBuf::from,
        );
        fill(&mut self.https_user, "PROVISION_HTTPS_USER", |v| {
            v.to_string_lossy().into_owned()
        });
        self
    }
}

impl Credentials {
    /// One line per secret file that users other than its owner may read
    /// (mode bits for group or others): anyone on the machine could then
    /// fetch the repository, or push to it with the same key.
    pub fn exposure_warnings(&self) -> Vec<String> {
        let files = [
            ("ssh_key", self.ssh_key.as_ref()),
            ("https_token_file", self.https_token_file.as_ref()),
            (
                "proxy_credentials_file",
                self.proxy_credentials_file.as_ref(),
            ),
        ];
        files
            .into_iter()
            .filter_map(|(key, path)| exposed(key, path?))
            .collect()
    }
}

/// A warning when the secret file `path` (of key `key`) is readable by
/// group or others.
pub fn exposed(key: &str, path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mode = fs::metadata(path).ok()?.mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{key} {} is readable by group or others (mode {mode:04o}); run chmod 600 on it",
            path.display()
        )
    })
}

/// Set `field` from the environment variable `name` when it is unset.
fn fill<T>(field: &mut Option<T>, name: &str, convert: impl FnOnce(OsString) -> T) {
    if field.is_none() {
        *field = std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(convert);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_fills_only_unset_fields() {
        let creds = Credentials {
            ssh_key: Some(PathBuf::from("/configured")),
            ..Credentials::default()
        };
        // The PROVISION_* variables may be read by other tests running in
        // parallel, so only a variable of this test's own is set here.
        assert_eq!(
            creds.with_env_defaults().ssh_key,
            Some(PathBuf::from("/configured"))
        );
        std::env::set_var("PROVISION_AUTH_TEST_FILL", "/from/env");
        let mut unset: Option<PathBuf> = None;
        fill(&mut unset, "PROVISION_AUTH_TEST_FILL", PathBuf::from);
        assert_eq!(unset, Some(PathBuf::from("/from/env")));
        let mut set = Some(PathBuf::from("/kept"));
        fill(&mut set, "PROVISION_AUTH_TEST_FILL", PathBuf::from);
        assert_eq!(set, Some(PathBuf::from("/kept")));
        std::env::set_var("PROVISION_AUTH_TEST_FILL", "");
        let mut empty: Option<PathBuf> = None;
        fill(&mut empty, "PROVISION_AUTH_TEST_FILL", PathBuf::from);
        assert_eq!(empty, None);
    }
}
