//! Who may do what on the NATS server: one user per role, with subject permissions, so that
//! only the processor can append to the ledger.
//!
//! `generate` writes, into a directory:
//! - `users.json`: user name and password per role (mode 0600; keep it secret);
//! - `nats-auth.conf`: the server's `authorization` block, included by `erp up --auth`.
//!
//! | user | may publish | may subscribe |
//! |---|---|---|
//! | `processor` | everything (it alone appends to `LEDGER`) | everything |
//! | `projector` | JetStream API except changes to `LEDGER`; KV buckets and snapshots; replies | view queries, replies |
//! | `upstream` | commands (`cmd.>`, `rpc.cmd.>`), view queries | replies |
//! | `auditor` | read-only JetStream API on `LEDGER` (info, consumers, direct get), view queries | replies |
//!
//! Nobody but `processor` may publish to the ledger's subjects or change the `LEDGER` or
//! `COMMANDS` streams.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The roles that connect to NATS.
pub const ROLES: [&str; 4] = ["processor", "projector", "upstream", "auditor"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub user: String,
    pub password: String,
}

/// Credentials per role, as written to `users.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub users: BTreeMap<String, User>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("{0} already exists; remove it first or choose another directory")]
    Exists(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuthError + '_ {
    move |error| AuthError::Io {
        path: path.to_owned(),
        error,
    }
}

fn password() -> String {
    // Two version-4 UUIDs: 244 random bits from the operating system's generator.
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl Credentials {
    pub fn users_path(dir: &Path) -> PathBuf {
        dir.join("users.json")
    }

    pub fn config_path(dir: &Path) -> PathBuf {
        dir.join("nats-auth.conf")
    }

    /// New random passwords for every role; writes both files. Refuses to overwrite.
    pub fn generate(dir: &Path) -> Result<Credentials, AuthError> {
        let users_path = Credentials::users_path(dir);
        if users_path.exists() {
            return Err(AuthError::Exists(users_path));
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let credentials = Credentials {
            users: ROLES
                .iter()
                .map(|role| {
                    (
                        (*role).to_owned(),
                        User {
                            user: (*role).to_owned(),
                            password: password(),
                        },
                    )
                })
                .collect(),
        };
        let json = serde_json::to_string_pretty(&credentials).expect("json");
        write_private(&users_path, json.as_bytes())?;
        let config_path = Credentials::config_path(dir);
        write_private(&config_path, credentials.server_config().as_bytes())?;
        Ok(credentials)
    }

    pub fn load(dir: &Path) -> Result<Credentials, AuthError> {
        let path = Credentials::users_path(dir);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let credentials: Credentials =
            serde_json::from_str(&text).map_err(|e| AuthError::Invalid {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        for role in ROLES {
            if !credentials.users.contains_key(role) {
                return Err(AuthError::Invalid {
                    path,
                    detail: format!("no user for role `{role}`"),
                });
            }
        }
        Ok(credentials)
    }

    /// `nats://user:password@host:port` for a role, from a plain URL.
    pub fn url_for(&self, role: &str, url: &str) -> String {
        let user = &self.users[role];
        match url.split_once("://") {
            Some((scheme, rest)) => format!("{scheme}://{}:{}@{rest}", user.user, user.password),
            None => format!("nats://{}:{}@{url}", user.user, user.password),
        }
    }

    /// The server's `authorization` block.
    pub fn server_config(&self) -> String {
        let quote = |s: &str| serde_json::to_string(s).expect("string");
        let list = |subjects: &[&str]| {
            subjects
                .iter()
                .map(|s| quote(s))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Changes to the ledger and command streams, refused to everyone but the processor.
        let stream_changes = [
            "$JS.API.STREAM.CREATE.LEDGER",
            "$JS.API.STREAM.UPDATE.LEDGER",
            "$JS.API.STREAM.DELETE.LEDGER",
            "$JS.API.STREAM.PURGE.LEDGER",
            "$JS.API.STREAM.MSG.DELETE.LEDGER",
            "$JS.API.STREAM.CREATE.COMMANDS",
            "$JS.API.STREAM.UPDATE.COMMANDS",
            "$JS.API.STREAM.DELETE.COMMANDS",
            "$JS.API.STREAM.PURGE.COMMANDS",
            "$JS.API.STREAM.MSG.DELETE.COMMANDS",
        ];
        let ledger_subjects = ["led.>"];
        let read_ledger = [
            "$JS.API.INFO",
            "$JS.API.STREAM.INFO.LEDGER",
            "$JS.API.CONSUMER.CREATE.LEDGER",
            "$JS.API.CONSUMER.CREATE.LEDGER.>",
            "$JS.API.CONSUMER.INFO.LEDGER.>",
            "$JS.API.CONSUMER.DELETE.LEDGER.>",
            "$JS.API.DIRECT.GET.LEDGER",
            "$JS.API.DIRECT.GET.LEDGER.>",
            "$JS.API.STREAM.MSG.GET.LEDGER",
            "$JS.FC.LEDGER.>",
            "view.>",
        ];
        let deny: Vec<&str> = ledger_subjects
            .iter()
            .chain(&stream_changes)
            .copied()
            .collect();
        let user = |role: &str,
                    publish_allow: &[&str],
                    publish_deny: &[&str],
                    subscribe: &[&str]| {
            let u = &self.users[role];
            let deny = if publish_deny.is_empty() {
                String::new()
            } else {
                format!(", deny: [{}]", list(publish_deny))
            };
            format!(
                "    {{ user: {}, password: {}, permissions: {{ publish: {{ allow: [{}]{deny} }}, subscribe: {{ allow: [{}] }} }} }}",
                quote(&u.user),
                quote(&u.password),
                list(publish_allow),
                list(subscribe),
            )
        };
        let users = [
            user("processor", &[">"], &[], &[">"]),
            user(
                "projector",
                &["$JS.API.>", "$KV.>", "$O.>", "$JS.FC.>", "_INBOX.>"],
                &deny,
                &["_INBOX.>", "view.>", "$KV.>"],
            ),
            user(
                "upstream",
                &["cmd.>", "rpc.cmd.>", "view.>"],
                &deny,
                &["_INBOX.>"],
            ),
            user("auditor", &read_ledger, &deny, &["_INBOX.>"]),
        ];
        format!(
            "# Generated by `erp auth init`. One user per role; see ledger/src/auth.rs.\nauthorization {{\n  users = [\n{}\n  ]\n}}\n",
            users.join("\n")
        )
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_credentials_load_back_and_urls_carry_them() {
        let dir = tempfile::tempdir().unwrap();
        let generated = Credentials::generate(dir.path()).unwrap();
        assert_eq!(Credentials::load(dir.path()).unwrap(), generated);
        assert!(matches!(
            Credentials::generate(dir.path()),
            Err(AuthError::Exists(_))
        ));
        let url = generated.url_for("auditor", "nats://127.0.0.1:4222");
        assert!(url.starts_with("nats://auditor:") && url.ends_with("@127.0.0.1:4222"));
        let config = std::fs::read_to_string(Credentials::config_path(dir.path())).unwrap();
        assert_eq!(config.matches("user:").count(), 4);
        assert_ne!(
            generated.users["auditor"].password,
            generated.users["upstream"].password
        );
    }
}

/// Splits `scheme://user:password@host:port` into the plain URL and the credentials.
pub fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            (
                format!("{scheme}://{host}"),
                Some((user.to_owned(), password.to_owned())),
            )
        }
        None => (url.to_owned(), None),
    }
}

/// Connects to NATS, taking a user and password from the URL if it has them (the client
/// library ignores credentials written in the URL). Several servers of a cluster may be given
/// separated by commas; the client fails over between them.
pub async fn connect(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut servers = Vec::new();
    let mut login = None;
    for part in url.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (plain, credentials) = split_credentials(part);
        servers.push(plain);
        login = login.or(credentials);
    }
    let options = match login {
        Some((user, password)) => {
            async_nats::ConnectOptions::with_user_and_password(user, password)
        }
        None => async_nats::ConnectOptions::new(),
    };
    options.connect(servers).await
}

#[cfg(test)]
mod url_tests {
    use super::split_credentials;

    #[test]
    fn credentials_come_out_of_the_url() {
        assert_eq!(
            split_credentials("nats://auditor:s3cr=t@127.0.0.1:4222"),
            (
                "nats://127.0.0.1:4222".to_owned(),
                Some(("auditor".to_owned(), "s3cr=t".to_owned()))
            )
        );
        assert_eq!(
            split_credentials("nats://127.0.0.1:4222"),
            ("nats://127.0.0.1:4222".to_owned(), None)
        );
    }
}
