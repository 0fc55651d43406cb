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

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;

use crate::subject::filter_matches;

/// Subjects no reply may go to, whatever the server says about its streams.
const ALWAYS_CAPTURED: [&str; 2] = ["led.>", "cmd.>"];

/// How long a list of the streams' subjects is trusted before it is read again.
const REFRESH: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct ReplyGuard {
    captured: Vec<String>,
    read_at: Option<Instant>,
}

impl Default for ReplyGuard {
    fn default() -> ReplyGuard {
        ReplyGuard {
            captured: ALWAYS_CAPTURED.iter().map(|s| (*s).to_owned()).collect(),
            read_at: None,
        }
    }
}

impl ReplyGuard {
    /// A guard that knows the subjects of every stream in `js`'s account (or only the ledger's
    /// and the intake's, if the streams cannot be listed).
    pub async fn load(js: &jetstream::Context) -> ReplyGuard {
        let mut guard = ReplyGuard::default();
        guard.refresh(js).await;
        guard
    }

    /// Reads the streams' subjects again if the list is older than 30 s.
    pub async fn refresh_if_stale(&mut self, js: &jetstream::Context) {
        if self.read_at.is_none_or(|t| t.elapsed() >= REFRESH) {
            self.refresh(js).await;
        }
    }

    async fn refresh(&mut self, js: &jetstream::Context) {
        let mut captured: Vec<String> = ALWAYS_CAPTURED.iter().map(|s| (*s).to_owned()).collect();
        let mut streams = js.streams();
        while let Some(info) = streams.next().await {
            match info {
                Ok(info) => captured.extend(info.config.subjects),
                Err(e) => {
                    tracing::warn!(error = %e, "listing streams for the reply guard; keeping the last list");
                    return;
                }
            }
        }
        self.captured = captured;
        self.read_at = Some(Instant::now());
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
        match self.captured.iter().find(|f| filter_matches(f, reply)) {
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
        let mut guard = ReplyGuard::default();
        guard.captured.push("$KV.view_ats.>".into());
        guard.captured.push("orders.*".into());
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
