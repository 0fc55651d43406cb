//! Bearer tokens for the HTTP gateway: each maps to one user of the auth directory (the same
//! users, roles and actors as on NATS). Only a token's SHA-256 is stored (`tokens.json`, mode
//! 0600, beside `users.json`); the token itself is printed once, when it is issued.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// Tokens begin with this, so a leaked one is recognisable in logs and secret scanners.
pub const PREFIX: &str = "erp_";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a token file: {message}")]
    Format { path: PathBuf, message: String },
    #[error(
        "`{0}` cannot have a token: tokens are for users that send commands and for the auditor; `erp auth add-user` adds a sender"
    )]
    UnknownUser(String),
    #[error("no token of `{user}`{matching} to revoke; `erp auth tokens` lists them")]
    NothingToRevoke { user: String, matching: String },
}

/// One issued token: whose, when, and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    pub user: String,
    pub sha256: String,
    pub issued_at: String,
}

/// The tokens of an auth directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub tokens: Vec<Issued>,
}

fn hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

impl Tokens {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("tokens.json")
    }

    /// The directory's tokens; none if it has no token file yet.
    pub fn load(dir: &Path) -> Result<Tokens, TokenError> {
        let path = Tokens::path(dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| TokenError::Format {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Tokens::default()),
            Err(source) => Err(TokenError::Io { path, source }),
        }
    }

    /// The user a presented token belongs to.
    pub fn user_of(&self, token: &str) -> Option<&str> {
        let presented = hash(token);
        self.tokens
            .iter()
            .find(|t| constant_time_eq(t.sha256.as_bytes(), presented.as_bytes()))
            .map(|t| t.user.as_str())
    }

    /// Issues a new token for `user` (who must be one of `users`), records its hash in `dir`,
    /// and returns the token: the only time it is ever shown.
    pub fn issue(dir: &Path, user: &str, users: &[&str]) -> Result<String, TokenError> {
        if !users.contains(&user) {
            return Err(TokenError::UnknownUser(user.to_owned()));
        }
        let mut tokens = Tokens::load(dir)?;
        let secret: Vec<u8> = (0..2)
            .flat_map(|_| *uuid::Uuid::new_v4().as_bytes())
            .collect();
        let token = format!("{PREFIX}{}", hex::encode(secret));
        tokens.tokens.push(Issued {
            user: user.to_owned(),
            sha256: hash(&token),
            issued_at: chrono_now(),
        });
        tokens.save(dir)?;
        Ok(token)
    }

    /// Revokes `user`'s tokens (only those whose hash starts with `sha256_prefix`, if given)
    /// and returns them. A gateway stops accepting them within a second.
    pub fn revoke(
        dir: &Path,
        user: &str,
        sha256_prefix: Option<&str>,
    ) -> Result<Vec<Issued>, TokenError> {
        let mut tokens = Tokens::load(dir)?;
        let (revoked, kept): (Vec<Issued>, Vec<Issued>) = tokens
            .tokens
            .into_iter()
            .partition(|t| t.user == user && sha256_prefix.is_none_or(|p| t.sha256.starts_with(p)));
        if revoked.is_empty() {
            return Err(TokenError::NothingToRevoke {
                user: user.to_owned(),
                matching: sha256_prefix
                    .map(|p| format!(" whose hash starts with `{p}`"))
                    .unwrap_or_default(),
            });
        }
        tokens.tokens = kept;
        tokens.save(dir)?;
        Ok(revoked)
    }

    fn save(&self, dir: &Path) -> Result<(), TokenError> {
        let path = Tokens::path(dir);
        let text = serde_json::to_string_pretty(self).expect("json");
        write_secret(&path, text.as_bytes()).map_err(|source| TokenError::Io { path, source })
    }
}

/// The tokens of a directory as a gateway holds them: read again when the file changes
/// (looked at no more than once a second), so issuing and revoking need no restart. A token
/// file that cannot be read refuses every token until it can (and says so in the log).
#[derive(Debug)]
pub struct LiveTokens {
    dir: PathBuf,
    state: std::sync::Mutex<LiveState>,
}

#[derive(Debug)]
struct LiveState {
    tokens: Result<Tokens, String>,
    /// The file's modification time and length when read (`None`: no file).
    stamp: Option<(std::time::SystemTime, u64)>,
    checked: std::time::Instant,
}

fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl LiveTokens {
    /// Reads the directory's tokens now; an unreadable file is an error here.
    pub fn open(dir: &Path) -> Result<LiveTokens, TokenError> {
        let path = Tokens::path(dir);
        let stamp = stamp(&path);
        let tokens = Tokens::load(dir)?;
        Ok(LiveTokens {
            dir: dir.to_path_buf(),
            state: std::sync::Mutex::new(LiveState {
                tokens: Ok(tokens),
                stamp,
                checked: std::time::Instant::now(),
            }),
        })
    }

    /// Tokens issued, as last read.
    pub fn count(&self) -> usize {
        let state = self.state.lock().expect("tokens lock");
        state.tokens.as_ref().map_or(0, |t| t.tokens.len())
    }

    /// The user a presented token belongs to, after reading the file again if it changed;
    /// `Err` when the file cannot be read.
    pub fn user_of(&self, token: &str) -> Result<Option<String>, String> {
        let mut state = self.state.lock().expect("tokens lock");
        if state.checked.elapsed() >= std::time::Duration::from_secs(1) {
            state.checked = std::time::Instant::now();
            let now = stamp(&Tokens::path(&self.dir));
            if now != state.stamp {
                state.stamp = now;
                state.tokens = Tokens::load(&self.dir).map_err(|e| e.to_string());
                match &state.tokens {
                    Ok(t) => tracing::info!(tokens = t.tokens.len(), "token file read again"),
                    Err(e) => {
                        tracing::error!(error = %e, "the token file cannot be read: every token is refused until it can")
                    }
                }
            }
        }
        match &state.tokens {
            Ok(tokens) => Ok(tokens.user_of(token).map(str::to_owned)),
            Err(e) => Err(e.clone()),
        }
    }
}

fn chrono_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    ledger::values::Timestamp::from_micros(now.as_micros() as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Writes a file only its owner may read.
fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_token_names_its_user_and_only_its_hash_is_stored() {
        let dir = tempfile_dir();
        let token = Tokens::issue(&dir, "upstream", &["upstream", "clerk"]).unwrap();
        assert!(token.starts_with(PREFIX) && token.len() == PREFIX.len() + 64);
        let stored = std::fs::read_to_string(Tokens::path(&dir)).unwrap();
        assert!(!stored.contains(&token));
        let tokens = Tokens::load(&dir).unwrap();
        assert_eq!(tokens.user_of(&token), Some("upstream"));
        assert_eq!(tokens.user_of("erp_00"), None);
        assert_eq!(tokens.user_of(&token[..token.len() - 1]), None);
        let second = Tokens::issue(&dir, "clerk", &["upstream", "clerk"]).unwrap();
        let tokens = Tokens::load(&dir).unwrap();
        assert_eq!(tokens.user_of(&second), Some("clerk"));
        assert_eq!(tokens.user_of(&token), Some("upstream"));
        assert!(matches!(
            Tokens::issue(&dir, "nobody", &["upstream"]),
            Err(TokenError::UnknownUser(_))
        ));
        // Revoking: by user (and hash prefix); nothing matching is an error.
        let third = Tokens::issue(&dir, "upstream", &["upstream", "clerk"]).unwrap();
        let third_hash = hash(&third);
        let revoked = Tokens::revoke(&dir, "upstream", Some(&third_hash[..12])).unwrap();
        assert_eq!(revoked.len(), 1);
        let tokens = Tokens::load(&dir).unwrap();
        assert_eq!(tokens.user_of(&third), None);
        assert_eq!(tokens.user_of(&token), Some("upstream"));
        assert!(matches!(
            Tokens::revoke(&dir, "upstream", Some(&third_hash[..12])),
            Err(TokenError::NothingToRevoke { .. })
        ));
        assert_eq!(Tokens::revoke(&dir, "clerk", None).unwrap().len(), 1);
        assert_eq!(Tokens::load(&dir).unwrap().user_of(&second), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("erp-tokens-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
