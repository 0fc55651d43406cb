//! Who may do what on the NATS server, enforced by the server itself through accounts.
//!
//! `Credentials::server_config` writes an `accounts` block with four accounts. Subjects of one
//! account are invisible to the others except through the exports and imports listed here,
//! and the server remaps the reply subject of every request that crosses accounts, so no
//! reply or publish acknowledgement can land on a stream's subjects in the ledger's account.
//!
//! | account | users | holds | may reach |
//! |---|---|---|---|
//! | `LEDGER` | `processor` | the `LEDGER` and `COMMANDS` streams | everything in it |
//! | `VIEWS` | `projector` | `LEDGER_MIRROR`, a read-only mirror of `LEDGER`; the view buckets, registry and snapshots | the mirror's feed |
//! | `AUDIT` | `auditor` | `LEDGER_MIRROR`, a read-only mirror of `LEDGER` | the mirror's feed; view queries; processor status |
//! | `CLIENTS` | every user that sends commands | nothing | its own command subjects and answer subjects (`erp.answer.<user>.>`), outcome and status queries, view queries |
//!
//! A mirror is a stream without subjects: no publish can add to it, and it keeps the
//! ledger's sequences, subjects, bytes and stored times, so readers walk it exactly as they
//! would walk `LEDGER`. Its feed is set up by the server (the mirror's own consumer); users
//! may not use the imported consumer API themselves.
//!
//! A user that sends commands may publish only on subjects that end in its own name
//! (`rpc.cmd.<entity>.<user>`, `cmd.<entity>.<user>`, for all its entities or the ones it is
//! granted), so the processor learns from the subject, not the body, who sent a command.
//!
//! Files, in the directory given to `erp auth`: `users.json` (user names and passwords, mode
//! 0600: keep it secret) and `nats-auth.conf` (the server's block, also 0600).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The user the processor connects as (the only user of the `LEDGER` account).
pub const PROCESSOR: &str = "processor";
/// The user projectors connect as (`VIEWS`).
pub const PROJECTOR: &str = "projector";
/// The user auditors connect as (`AUDIT`): it reads the ledger, and changes nothing.
pub const AUDITOR: &str = "auditor";
/// Users every setup has; every other user sends commands (`CLIENTS`).
pub const INFRASTRUCTURE: [&str; 3] = [PROCESSOR, PROJECTOR, AUDITOR];

/// Where a copy of the ledger is kept for readers outside the ledger's account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorFeed {
    /// The account the mirror lives in.
    pub account: &'static str,
    /// The mirror's stream name there. Not `LEDGER`: the account imports the ledger account's
    /// flow-control subjects (`$JS.FC.LEDGER.>`) for the mirror's feed, and its own consumers
    /// on the mirror must keep theirs.
    pub stream: &'static str,
    /// The stream it copies, in the ledger's account.
    pub origin: &'static str,
    /// The prefix under which that account reaches the ledger account's consumer API.
    pub api_prefix: &'static str,
    /// The subject prefix the ledger account delivers the mirror's messages on.
    pub deliver_prefix: &'static str,
}

/// The projectors' copy of the ledger.
pub const VIEWS_MIRROR: MirrorFeed = MirrorFeed {
    account: "VIEWS",
    stream: "LEDGER_MIRROR",
    origin: "LEDGER",
    api_prefix: "$JS.ledger.API",
    deliver_prefix: "erp.mirror.views",
};

/// The auditors' copy of the ledger.
pub const AUDIT_MIRROR: MirrorFeed = MirrorFeed {
    account: "AUDIT",
    stream: "LEDGER_MIRROR",
    origin: "LEDGER",
    api_prefix: "$JS.ledger.API",
    deliver_prefix: "erp.mirror.audit",
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub user: String,
    pub password: String,
}

/// Credentials per user, as written to `users.json`.
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
    #[error(
        "user name `{0}`: expected 1 to 64 letters, digits, `-` or `_` (it becomes a subject token)"
    )]
    UserName(String),
    #[error("user `{0}` exists already")]
    UserExists(String),
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

/// A user name as a subject token: the server's permission on `rpc.cmd.*.<user>` means what
/// it says only if the name is one plain token.
pub fn valid_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a user that sends commands may publish on: every legal entity's command subjects
/// (`None`), or those of these entities only (subject tokens, escaped).
pub type EntityGrant = Option<Vec<String>>;

impl Credentials {
    pub fn users_path(dir: &Path) -> PathBuf {
        dir.join("users.json")
    }

    pub fn config_path(dir: &Path) -> PathBuf {
        dir.join("nats-auth.conf")
    }

    /// New random passwords for the infrastructure users and `senders`; writes `users.json`.
    /// Refuses to overwrite.
    pub fn generate(dir: &Path, senders: &[&str]) -> Result<Credentials, AuthError> {
        let users_path = Credentials::users_path(dir);
        if users_path.exists() {
            return Err(AuthError::Exists(users_path));
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut credentials = Credentials {
            users: BTreeMap::new(),
        };
        for name in INFRASTRUCTURE.iter().chain(senders) {
            credentials.insert(name)?;
        }
        credentials.save(dir, true)?;
        Ok(credentials)
    }

    /// Adds a user with a new password to `users.json`.
    pub fn add_user(dir: &Path, name: &str) -> Result<Credentials, AuthError> {
        let mut credentials = Credentials::load(dir)?;
        credentials.insert(name)?;
        credentials.save(dir, false)?;
        Ok(credentials)
    }

    fn insert(&mut self, name: &str) -> Result<(), AuthError> {
        if !valid_user_name(name) {
            return Err(AuthError::UserName(name.to_owned()));
        }
        if self.users.contains_key(name) {
            return Err(AuthError::UserExists(name.to_owned()));
        }
        self.users.insert(
            name.to_owned(),
            User {
                user: name.to_owned(),
                password: password(),
            },
        );
        Ok(())
    }

    fn save(&self, dir: &Path, new: bool) -> Result<(), AuthError> {
        let json = serde_json::to_string_pretty(self).expect("json");
        write_private(&Credentials::users_path(dir), json.as_bytes(), new)
    }

    /// Writes the server's block (for `nats-server -c`, or included by `erp up --auth`).
    pub fn write_server_config(
        &self,
        dir: &Path,
        senders: &BTreeMap<String, EntityGrant>,
    ) -> Result<(), AuthError> {
        write_private(
            &Credentials::config_path(dir),
            self.server_config(senders).as_bytes(),
            false,
        )
    }

    pub fn load(dir: &Path) -> Result<Credentials, AuthError> {
        let path = Credentials::users_path(dir);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let credentials: Credentials =
            serde_json::from_str(&text).map_err(|e| AuthError::Invalid {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        for name in INFRASTRUCTURE {
            if !credentials.users.contains_key(name) {
                return Err(AuthError::Invalid {
                    path,
                    detail: format!("no user `{name}`; `erp auth init` writes one"),
                });
            }
        }
        Ok(credentials)
    }

    /// `nats://user:password@host:port` for a user, from a plain URL (each of a
    /// comma-separated list).
    pub fn url_for(&self, name: &str, url: &str) -> String {
        let user = &self.users[name];
        url.split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| match u.split_once("://") {
                Some((scheme, rest)) => {
                    format!("{scheme}://{}:{}@{rest}", user.user, user.password)
                }
                None => format!("nats://{}:{}@{u}", user.user, user.password),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The server's `accounts` block. `senders`: every user that sends commands, with the
    /// entities it may send for; users of `users.json` not named there (and not
    /// infrastructure) get no account and cannot log in.
    pub fn server_config(&self, senders: &BTreeMap<String, EntityGrant>) -> String {
        let quote = |s: &str| serde_json::to_string(s).expect("string");
        let list = |subjects: &[String]| {
            subjects
                .iter()
                .map(|s| quote(s))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let user = |name: &str,
                    publish: &[String],
                    deny: &[String],
                    subscribe: &[String],
                    responds: bool| {
            let u = &self.users[name];
            let deny = if deny.is_empty() {
                String::new()
            } else {
                format!(", deny: [{}]", list(deny))
            };
            let responses = if responds {
                ", allow_responses: true"
            } else {
                ""
            };
            format!(
                "      {{ user: {}, password: {}, permissions: {{ publish: {{ allow: [{}]{deny} }}, subscribe: {{ allow: [{}] }}{responses} }} }}",
                quote(&u.user),
                quote(&u.password),
                list(publish),
                list(subscribe),
            )
        };
        let mirror_imports = |feed: &MirrorFeed| {
            format!(
                "      {{ service: {{ account: LEDGER, subject: \"$JS.API.CONSUMER.CREATE.{origin}\" }}, to: \"{api}.CONSUMER.CREATE.{origin}\" }}\n      {{ service: {{ account: LEDGER, subject: \"$JS.API.CONSUMER.CREATE.{origin}.>\" }}, to: \"{api}.CONSUMER.CREATE.{origin}.>\" }}\n      {{ service: {{ account: LEDGER, subject: \"$JS.FC.{origin}.>\" }} }}\n      {{ stream: {{ account: LEDGER, subject: \"{deliver}.>\" }} }}",
                api = feed.api_prefix,
                origin = feed.origin,
                deliver = feed.deliver_prefix
            )
        };
        let copy = VIEWS_MIRROR.stream;
        // What no reader may do to its copy of the ledger, nor through the imported APIs (the
        // server feeds the mirror itself).
        let mirror_denials: Vec<String> = [
            format!("$JS.API.STREAM.DELETE.{copy}"),
            format!("$JS.API.STREAM.PURGE.{copy}"),
            format!("$JS.API.STREAM.UPDATE.{copy}"),
            format!("$JS.API.STREAM.MSG.DELETE.{copy}"),
            "$JS.API.STREAM.UPDATE.LEDGER".into(),
            "$JS.FC.LEDGER.>".into(),
            format!("{}.>", VIEWS_MIRROR.api_prefix),
            "erp.mirror.>".into(),
        ]
        .into();
        let read_mirror: Vec<String> = [
            "$JS.API.INFO".to_owned(),
            format!("$JS.API.STREAM.INFO.{copy}"),
            format!("$JS.API.STREAM.CREATE.{copy}"),
            format!("$JS.API.CONSUMER.CREATE.{copy}"),
            format!("$JS.API.CONSUMER.CREATE.{copy}.>"),
            format!("$JS.API.CONSUMER.INFO.{copy}.>"),
            format!("$JS.API.CONSUMER.DELETE.{copy}.>"),
            format!("$JS.API.DIRECT.GET.{copy}"),
            format!("$JS.API.DIRECT.GET.{copy}.>"),
            format!("$JS.API.STREAM.MSG.GET.{copy}"),
            format!("$JS.FC.{copy}.>"),
        ]
        .into();
        let processor = user(PROCESSOR, &strings(&[">"]), &[], &strings(&[">"]), true);
        let projector = user(
            PROJECTOR,
            &strings(&[
                "$JS.API.>",
                "$KV.>",
                "$O.>",
                "$JS.FC.>",
                "$JS.ACK.>",
                "_INBOX.>",
            ]),
            &mirror_denials,
            &strings(&["_INBOX.>", "view.>"]),
            true,
        );
        let mut auditor_publish = read_mirror.clone();
        auditor_publish.extend(strings(&[
            "view.>",
            "rpc.outcome",
            "rpc.status",
            "erp.up.status",
        ]));
        let auditor = user(
            AUDITOR,
            &auditor_publish,
            &mirror_denials,
            &strings(&["_INBOX.>"]),
            false,
        );
        let clients: Vec<String> = senders
            .iter()
            .filter(|(name, _)| self.users.contains_key(*name))
            .map(|(name, entities)| {
                let mut publish = Vec::new();
                let tokens: Vec<String> = match entities {
                    None => vec!["*".into()],
                    Some(list) => list.clone(),
                };
                for entity in &tokens {
                    publish.push(format!("rpc.cmd.{entity}.{name}"));
                    publish.push(format!("cmd.{entity}.{name}"));
                }
                publish.extend(strings(&[
                    "rpc.outcome",
                    "rpc.status",
                    "erp.up.status",
                    "view.>",
                ]));
                let subscribe = vec!["_INBOX.>".to_owned(), format!("erp.answer.{name}.>")];
                user(name, &publish, &[], &subscribe, false)
            })
            .collect();
        format!(
            r#"# Generated by `erp auth`. Four accounts; see ledger/src/auth.rs.
accounts {{
  LEDGER: {{
    jetstream: enabled
    users: [
{processor}
    ]
    exports: [
      {{ service: "rpc.cmd.>", accounts: [CLIENTS] }}
      {{ service: "cmd.>", accounts: [CLIENTS] }}
      {{ service: "rpc.outcome", accounts: [CLIENTS, AUDIT] }}
      {{ service: "rpc.status", accounts: [CLIENTS, AUDIT] }}
      {{ service: "erp.up.status", accounts: [CLIENTS, AUDIT] }}
      {{ service: "$JS.API.CONSUMER.CREATE.LEDGER", accounts: [VIEWS, AUDIT] }}
      {{ service: "$JS.API.CONSUMER.CREATE.LEDGER.>", accounts: [VIEWS, AUDIT] }}
      {{ service: "$JS.FC.LEDGER.>", accounts: [VIEWS, AUDIT] }}
      {{ stream: "erp.answer.>", accounts: [CLIENTS] }}
      {{ stream: "{views_deliver}.>", accounts: [VIEWS] }}
      {{ stream: "{audit_deliver}.>", accounts: [AUDIT] }}
    ]
  }}
  VIEWS: {{
    jetstream: enabled
    users: [
{projector}
    ]
    imports: [
{views_mirror}
    ]
    exports: [
      {{ service: "view.>", accounts: [CLIENTS, AUDIT] }}
    ]
  }}
  AUDIT: {{
    jetstream: enabled
    users: [
{auditor}
    ]
    imports: [
{audit_mirror}
      {{ service: {{ account: LEDGER, subject: "rpc.outcome" }} }}
      {{ service: {{ account: LEDGER, subject: "rpc.status" }} }}
      {{ service: {{ account: LEDGER, subject: "erp.up.status" }} }}
      {{ service: {{ account: VIEWS, subject: "view.>" }} }}
    ]
  }}
  CLIENTS: {{
    users: [
{clients}
    ]
    imports: [
      {{ service: {{ account: LEDGER, subject: "rpc.cmd.>" }} }}
      {{ service: {{ account: LEDGER, subject: "cmd.>" }} }}
      {{ service: {{ account: LEDGER, subject: "rpc.outcome" }} }}
      {{ service: {{ account: LEDGER, subject: "rpc.status" }} }}
      {{ service: {{ account: LEDGER, subject: "erp.up.status" }} }}
      {{ service: {{ account: VIEWS, subject: "view.>" }} }}
      {{ stream: {{ account: LEDGER, subject: "erp.answer.>" }} }}
    ]
  }}
}}
"#,
            views_deliver = VIEWS_MIRROR.deliver_prefix,
            audit_deliver = AUDIT_MIRROR.deliver_prefix,
            views_mirror = mirror_imports(&VIEWS_MIRROR),
            audit_mirror = mirror_imports(&AUDIT_MIRROR),
            clients = clients.join("\n"),
        )
    }
}

/// Writes a file readable by its owner only; `new`: refuse to replace one.
fn write_private(path: &Path, bytes: &[u8], new: bool) -> Result<(), AuthError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    if new {
        options.write(true).create_new(true);
    } else {
        options.write(true).create(true).truncate(true);
    }
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
        let generated = Credentials::generate(dir.path(), &["shop-a"]).unwrap();
        assert_eq!(Credentials::load(dir.path()).unwrap(), generated);
        assert!(matches!(
            Credentials::generate(dir.path(), &[]),
            Err(AuthError::Exists(_))
        ));
        let url = generated.url_for("auditor", "nats://127.0.0.1:4222");
        assert!(url.starts_with("nats://auditor:") && url.ends_with("@127.0.0.1:4222"));
        let senders = BTreeMap::from([("shop-a".to_owned(), Some(vec!["UK01".to_owned()]))]);
        let config = generated.server_config(&senders);
        assert_eq!(config.matches("user:").count(), 4);
        assert!(config.contains("\"rpc.cmd.UK01.shop-a\""), "{config}");
        assert_ne!(
            generated.users["auditor"].password,
            generated.users["shop-a"].password
        );
        let added = Credentials::add_user(dir.path(), "shop-b").unwrap();
        assert!(added.users.contains_key("shop-b"));
        assert!(matches!(
            Credentials::add_user(dir.path(), "shop-b"),
            Err(AuthError::UserExists(_))
        ));
        assert!(matches!(
            Credentials::add_user(dir.path(), "a.b"),
            Err(AuthError::UserName(_))
        ));
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
    options
        // A publish the server refuses (a permissions violation) is otherwise silent: the
        // sender would only see a request time out.
        .event_callback(|event| async move {
            if let async_nats::Event::ServerError(error) = event {
                tracing::error!(%error, "the NATS server refused an operation of this connection");
            }
        })
        .connect(servers)
        .await
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
