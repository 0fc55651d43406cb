//! Who a sender is, and what it may claim.
//!
//! With credentials (`erp auth init`), every NATS user that may send commands is a principal:
//! the actor it acts as, the roles it may act in, the legal entities it may act for, and
//! whether it is an integration that acts for its own end users. The server lets a user
//! publish commands only on subjects that end in its own user name
//! (`rpc.cmd.<entity>.<user>`, `cmd.<entity>.<user>`), so the user token of the subject is
//! what the server authenticated; the service looks it up here (`Sender`) and the processor
//! refuses, as `forbidden` and recorded, any command whose body claims another actor, a role
//! the user does not hold, an entity it may not act for, or an end user it may not name.
//!
//! Without credentials (a local development server), there is no sender: the command's own
//! actor is taken as stated, and `erp up` says so when it starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ledger::auth::{AuthError, Credentials, EntityGrant};
use ledger::values::{Actor, ActorId, EntityId, Role};
use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::decide::{Rejection, code, reject};

/// What one user may act as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    /// The actor id its commands are recorded under.
    pub actor: ActorId,
    /// The roles it may act in (see `crate::roles`); the first is used when a command names
    /// no actor.
    pub roles: Vec<Role>,
    /// The legal entities it may act for; empty: every entity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entities: Vec<EntityId>,
    /// An integration acting for its own end users: its commands may name one in
    /// `on_behalf_of`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub end_users: bool,
}

/// The principal table: NATS user name -> principal. Written by `erp auth` as
/// `principals.json` (no secrets in it) and read by the processor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Principals(pub BTreeMap<String, Principal>);

impl Principals {
    /// Reads a table, refusing one a processor could not use.
    pub fn from_json(text: &str) -> Result<Principals, String> {
        let table: Principals = serde_json::from_str(text).map_err(|e| {
            format!(
                "principal table: {e}; expected {{\"user\": {{\"actor\": \"id\", \"roles\": [\"clerk\"]}}}}"
            )
        })?;
        for (user, principal) in &table.0 {
            if !ledger::auth::valid_user_name(user) {
                return Err(format!(
                    "principal table: user `{user}`: expected 1 to 64 letters, digits, `-` or `_`"
                ));
            }
            if principal.roles.is_empty() {
                return Err(format!(
                    "principal table: user `{user}` has no role; expected at least one"
                ));
            }
        }
        Ok(table)
    }

    /// The sender a user name stands for, if the table knows it.
    pub fn sender(&self, user: &str) -> Option<Sender> {
        self.0.get(user).map(|principal| Sender {
            user: user.to_owned(),
            principal: principal.clone(),
        })
    }
}

/// The files `erp auth` writes into one directory: the users' secrets and the server's
/// block (`ledger::auth::Credentials`), and the principal table (`principals.json`).
#[derive(Debug, Clone)]
pub struct AuthDir {
    pub credentials: Credentials,
    pub principals: Principals,
}

impl AuthDir {
    pub fn principals_path(dir: &Path) -> PathBuf {
        dir.join("principals.json")
    }

    /// The principals `erp auth init` creates: one integration that acts for its end users
    /// (`upstream`), one person per role, and the exception holder (`exceptions`, role
    /// `system`).
    pub fn default_principals() -> Principals {
        let principal = |role: &str, end_users| Principal {
            actor: ActorId::new(role).expect("valid id"),
            roles: vec![Role::new(role).expect("valid role")],
            entities: Vec::new(),
            end_users,
        };
        Principals(
            [
                ("upstream", principal("upstream", true)),
                ("clerk", principal("clerk", false)),
                ("buyer", principal("buyer", false)),
                ("warehouse", principal("warehouse", false)),
                ("controller", principal("controller", false)),
                ("admin", principal("admin", false)),
                // The exception holder of `erp up`: holds and releases orders for blocking
                // exception rules.
                (
                    "exceptions",
                    Principal {
                        actor: ActorId::new("exceptions").expect("valid id"),
                        roles: vec![Role::new("system").expect("valid role")],
                        entities: Vec::new(),
                        end_users: false,
                    },
                ),
            ]
            .into_iter()
            .map(|(user, p)| (user.to_owned(), p))
            .collect(),
        )
    }

    /// New credentials, the default principals, and the server's block. Refuses to overwrite.
    pub fn init(dir: &Path) -> Result<AuthDir, AuthError> {
        let principals = AuthDir::default_principals();
        let senders: Vec<&str> = principals.0.keys().map(String::as_str).collect();
        let credentials = Credentials::generate(dir, &senders)?;
        let auth = AuthDir {
            credentials,
            principals,
        };
        auth.save(dir)?;
        Ok(auth)
    }

    pub fn load(dir: &Path) -> Result<AuthDir, AuthError> {
        let credentials = Credentials::load(dir)?;
        let path = AuthDir::principals_path(dir);
        let text = std::fs::read_to_string(&path).map_err(|error| AuthError::Io {
            path: path.clone(),
            error,
        })?;
        let principals =
            Principals::from_json(&text).map_err(|detail| AuthError::Invalid { path, detail })?;
        Ok(AuthDir {
            credentials,
            principals,
        })
    }

    /// Adds a user that sends commands: a password, its principal, and the server's block
    /// rewritten. The server must reload its configuration, and processors restart, to know it.
    pub fn add_user(dir: &Path, user: &str, principal: Principal) -> Result<AuthDir, AuthError> {
        let mut auth = AuthDir::load(dir)?;
        if principal.roles.is_empty() {
            return Err(AuthError::Invalid {
                path: AuthDir::principals_path(dir),
                detail: format!("user `{user}` needs at least one role"),
            });
        }
        auth.credentials = Credentials::add_user(dir, user)?;
        auth.principals.0.insert(user.to_owned(), principal);
        auth.save(dir)?;
        Ok(auth)
    }

    fn save(&self, dir: &Path) -> Result<(), AuthError> {
        let path = AuthDir::principals_path(dir);
        let json = serde_json::to_string_pretty(&self.principals).expect("json");
        std::fs::write(&path, json).map_err(|error| AuthError::Io { path, error })?;
        self.credentials.write_server_config(dir, &self.grants())
    }

    /// What each sender may publish on: its entities' command subjects.
    fn grants(&self) -> BTreeMap<String, EntityGrant> {
        self.principals
            .0
            .iter()
            .map(|(user, p)| {
                let grant = (!p.entities.is_empty()).then(|| {
                    p.entities
                        .iter()
                        .map(|e| ledger::subject::escape_token(e.as_str()))
                        .collect()
                });
                (user.clone(), grant)
            })
            .collect()
    }

    /// The server's block for these users.
    pub fn server_config(&self) -> String {
        self.credentials.server_config(&self.grants())
    }
}

/// The authenticated sender of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub user: String,
    pub principal: Principal,
}

impl Sender {
    /// The actor of a command that names none.
    pub fn default_actor(&self) -> Actor {
        Actor {
            id: self.principal.actor.clone(),
            role: self.principal.roles[0].clone(),
        }
    }
}

/// `Err(forbidden)` when the command claims more than its sender's credentials allow.
/// Commands without a sender (no authentication) pass.
pub fn check_sender(command: &Command) -> Result<(), Rejection> {
    let Some(sender) = &command.sender else {
        return Ok(());
    };
    let p = &sender.principal;
    let user = &sender.user;
    if command.actor.id != p.actor {
        return Err(reject(
            code::FORBIDDEN,
            format!(
                "user `{user}` acts as actor `{}`; the command claims actor `{}`",
                p.actor, command.actor.id
            ),
        ));
    }
    if !p.roles.contains(&command.actor.role) {
        return Err(reject(
            code::FORBIDDEN,
            format!(
                "user `{user}` may act as {}; the command claims role `{}`",
                list(&p.roles),
                command.actor.role
            ),
        ));
    }
    if !p.entities.is_empty() && !p.entities.contains(&command.legal_entity) {
        return Err(reject(
            code::FORBIDDEN,
            format!(
                "user `{user}` may act for {}; the command is for `{}`",
                list(&p.entities),
                command.legal_entity
            ),
        ));
    }
    if let Some(end_user) = &command.on_behalf_of
        && !p.end_users
    {
        return Err(reject(
            code::FORBIDDEN,
            format!(
                "user `{user}` does not act for end users; the command names `{end_user}` in on_behalf_of"
            ),
        ));
    }
    Ok(())
}

/// The actor a command's records name: the one it claims when its sender may claim it, or
/// else the sender's own (a refused claim is recorded against who made it, not whom it named).
pub fn recorded_actor(command: &Command) -> Actor {
    match &command.sender {
        Some(s)
            if s.principal.actor != command.actor.id
                || !s.principal.roles.contains(&command.actor.role) =>
        {
            s.default_actor()
        }
        _ => command.actor.clone(),
    }
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    //! Goal: a sender can claim only its own actor, its own roles, its own entities, and end
    //! users only when it is an integration; a command without a sender is unchanged.
    use super::*;

    fn sender(end_users: bool, entities: &[&str]) -> Sender {
        Sender {
            user: "shop-a".into(),
            principal: Principal {
                actor: ActorId::new("shop-a").unwrap(),
                roles: vec![Role::new("upstream").unwrap(), Role::new("clerk").unwrap()],
                entities: entities
                    .iter()
                    .map(|e| EntityId::new(*e).unwrap())
                    .collect(),
                end_users,
            },
        }
    }

    fn command(json: serde_json::Value, sender: &Sender) -> Command {
        let mut body = serde_json::json!({
            "command_id": "0190c3a2-0000-7000-8000-000000000001", "legal_entity": "UK01",
            "effective_at": "2011-06-30T09:00:00Z", "type": "channel.define",
            "data": {"channel": "web"}});
        for (k, v) in json.as_object().unwrap() {
            body[k] = v.clone();
        }
        crate::command::decode_from(body.to_string().as_bytes(), Some(sender)).unwrap()
    }

    #[test]
    fn claims_beyond_the_credential_are_forbidden_with_the_reason() {
        let s = sender(false, &["UK01"]);
        let cases = [
            (serde_json::json!({}), None),
            (
                serde_json::json!({"actor": {"id": "shop-a", "role": "clerk"}}),
                None,
            ),
            (
                serde_json::json!({"actor": {"id": "someone-else", "role": "clerk"}}),
                Some("claims actor `someone-else`"),
            ),
            (
                serde_json::json!({"actor": {"id": "shop-a", "role": "admin"}}),
                Some("claims role `admin`"),
            ),
            (
                serde_json::json!({"legal_entity": "DE01"}),
                Some("the command is for `DE01`"),
            ),
            (
                serde_json::json!({"on_behalf_of": "customer-1"}),
                Some("does not act for end users"),
            ),
        ];
        for (json, refused) in cases {
            let c = command(json.clone(), &s);
            match (check_sender(&c), refused) {
                (Ok(()), None) => {}
                (Err(r), Some(why)) => {
                    assert_eq!(r.code, code::FORBIDDEN);
                    assert!(r.message.contains(why), "{json}: {}", r.message);
                }
                (other, _) => panic!("{json}: {other:?}"),
            }
        }
        let integration = sender(true, &[]);
        let c = command(
            serde_json::json!({"on_behalf_of": "customer-1"}),
            &integration,
        );
        assert_eq!(check_sender(&c), Ok(()));
        assert_eq!(c.actor.id.as_str(), "shop-a");
        assert_eq!(c.actor.role.as_str(), "upstream");
    }

    #[test]
    fn a_table_with_a_bad_user_name_or_no_role_is_refused() {
        let err =
            Principals::from_json(r#"{"a.b": {"actor": "x", "roles": ["clerk"]}}"#).unwrap_err();
        assert!(err.contains("user `a.b`"), "{err}");
        let err = Principals::from_json(r#"{"a": {"actor": "x", "roles": []}}"#).unwrap_err();
        assert!(err.contains("has no role"), "{err}");
        let ok = Principals::from_json(r#"{"a": {"actor": "x", "roles": ["clerk"]}}"#).unwrap();
        assert_eq!(ok.sender("a").unwrap().default_actor().id.as_str(), "x");
        assert!(ok.sender("b").is_none());
    }
}
