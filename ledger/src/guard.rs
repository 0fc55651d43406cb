//! Where a service may send an answer.
//!
//! A requester chooses the reply subject of its request, and the server does not check it
//! against the requester's permissions: a service that answers wherever it is told would
//! publish into any stream that captures that subject (the ledger included). So every
//! service of this project (the processor, the projectors) asks the `ReplyGuard` first and
//! never answers onto a subject a stream captures, nor into the server's own namespaces
//! (`$JS`, `$KV`, `$O`, `$SYS`, ...). On a server with accounts (`erp auth`) replies from other
//! accounts arrive remapped (`_R_...`) and cannot reach a stream anyway; the guard is the
//! defence that holds in every mode.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;

use crate::subject::filter_matches;

/// Subjects no reply may go to, whatever the server says about its streams.
const ALWAYS_CAPTURED: [&str; 2] = ["led.>", "cmd.>"];

/// How long a list of the streams' subjects is trusted before it is read again.
const REFRESH: Duration = Duration::from_secs(30);
/// How soon a list that could not be read is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Shared by every clone: a refresh done for one is seen by all.
#[derive(Debug, Clone)]
pub struct ReplyGuard {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    captured: RwLock<Vec<String>>,
    /// When the list is to be read again (`None`: never read).
    next_read: Mutex<Option<Instant>>,
    refreshing: AtomicBool,
}

impl Default for ReplyGuard {
    fn default() -> ReplyGuard {
        ReplyGuard {
            shared: Arc::new(Shared {
                captured: RwLock::new(ALWAYS_CAPTURED.iter().map(|s| (*s).to_owned()).collect()),
                next_read: Mutex::new(None),
                refreshing: AtomicBool::new(false),
            }),
        }
    }
}

impl ReplyGuard {
    /// A guard that knows the subjects of every stream in `js`'s account (or only the ledger's
    /// and the intake's, if the streams cannot be listed).
    pub async fn load(js: &jetstream::Context) -> ReplyGuard {
        let guard = ReplyGuard::default();
        guard.refresh(js).await;
        guard
    }

    /// Reads the streams' subjects again, in the background, if the list is older than 30 s
    /// (5 s after a failed read). Never waits: listing streams needs the cluster's JetStream
    /// leader, and a service must go on answering while it is being elected.
    pub fn refresh_if_stale(&self, js: &jetstream::Context) {
        let due = self
            .shared
            .next_read
            .lock()
            .expect("guard lock")
            .is_none_or(|at| Instant::now() >= at);
        if !due || self.shared.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (guard, js) = (self.clone(), js.clone());
        tokio::spawn(async move {
            guard.refresh(&js).await;
            guard.shared.refreshing.store(false, Ordering::Release);
        });
    }

    async fn refresh(&self, js: &jetstream::Context) {
        let mut captured: Vec<String> = ALWAYS_CAPTURED.iter().map(|s| (*s).to_owned()).collect();
        let mut streams = js.streams();
        let mut failed = false;
        while let Some(info) = streams.next().await {
            match info {
                Ok(info) => captured.extend(info.config.subjects),
                Err(e) => {
                    tracing::warn!(error = %e, "listing streams for the reply guard; keeping the last list");
                    failed = true;
                    break;
                }
            }
        }
        let next = Instant::now() + if failed { RETRY } else { REFRESH };
        *self.shared.next_read.lock().expect("guard lock") = Some(next);
        if !failed {
            *self.shared.captured.write().expect("guard lock") = captured;
        }
    }

    /// `Err(why)` when an answer must not go to `reply`.
    pub fn check(&self, reply: &str) -> Result<(), String> {
        if reply.is_empty()
            || reply
                .split('.')
                .any(|t| t.is_empty() || t == "*" || t == ">" || t.contains(char::is_whitespace))
        {
            return Err(format!("`{reply}` is not a subject one can publish to"));
        }
        if reply.starts_with('$') {
            return Err(format!(
                "`{reply}` is in the server's own namespace; answers never go there"
            ));
        }
        let captured = self.shared.captured.read().expect("guard lock");
        match captured.iter().find(|f| filter_matches(f, reply)) {
            Some(filter) => Err(format!(
                "`{reply}` is captured by a stream (`{filter}`); answers never go into a stream"
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Goal: inboxes pass; stream subjects, the server's namespaces and wildcards do not.
    use super::*;

    #[test]
    fn answers_go_to_inboxes_only() {
        let guard = ReplyGuard::default();
        {
            let mut captured = guard.shared.captured.write().unwrap();
            captured.push("$KV.view_ats.>".into());
            captured.push("orders.*".into());
        }
        for ok in ["_INBOX.abc.1", "_R_.x.y", "my.reply"] {
            assert_eq!(guard.check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "led.sku.X",
            "cmd.UK01",
            "$KV.view_ats.k",
            "$JS.API.STREAM.DELETE.LEDGER",
            "orders.1",
            "a.*",
            "a..b",
            "",
        ] {
            assert!(guard.check(bad).is_err(), "{bad}");
        }
    }
}
