//! Asking a view: `view.<name>.<op>` request/reply.

use std::time::Duration;

use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("no answer from view {view}: {detail}")]
    Unavailable { view: String, detail: String },
    #[error("view {view} at sequence {seq}: {code}: {message}")]
    Refused {
        view: String,
        seq: u64,
        code: String,
        message: String,
    },
}

/// A view's answer: the value and the ledger sequence it reflects.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub seq: u64,
    pub result: Value,
}

#[derive(Debug, Clone)]
pub struct ViewClient {
    nats: async_nats::Client,
}

impl ViewClient {
    pub fn new(nats: async_nats::Client) -> ViewClient {
        ViewClient { nats }
    }

    /// Asks `view.<view>.<op>`. With `min_seq`, the view answers only once it has applied the
    /// ledger up to that sequence (read-your-writes), or with a `timeout` error.
    pub async fn ask(
        &self,
        view: &str,
        op: &str,
        mut body: Value,
        min_seq: Option<u64>,
        timeout: Duration,
    ) -> Result<Answer, ViewError> {
        if let Some(min_seq) = min_seq {
            body["min_seq"] = json!(min_seq);
            body["timeout_ms"] = json!(timeout.as_millis() as u64);
        }
        let unavailable = |detail: String| ViewError::Unavailable {
            view: view.into(),
            detail,
        };
        // The request's own timeout is the wait asked for (plus the answer's way back), not
        // the connection's default (10 s), which would cut a long `min_seq` wait short.
        let request = self.nats.send_request(
            format!("view.{view}.{op}"),
            async_nats::Request::new()
                .payload(serde_json::to_vec(&body).expect("json").into())
                .timeout(Some(timeout + Duration::from_secs(1))),
        );
        let msg = tokio::time::timeout(timeout + Duration::from_secs(2), request)
            .await
            .map_err(|_| unavailable(format!("no answer within {timeout:?}")))?
            .map_err(|e| unavailable(e.to_string()))?;
        let answer: Value =
            serde_json::from_slice(&msg.payload).map_err(|e| unavailable(e.to_string()))?;
        let seq = answer.get("seq").and_then(Value::as_u64).unwrap_or(0);
        if let Some(error) = answer.get("error") {
            return Err(ViewError::Refused {
                view: view.into(),
                seq,
                code: error
                    .get("code")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
                message: error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
            });
        }
        Ok(Answer {
            seq,
            result: answer.get("result").cloned().unwrap_or(Value::Null),
        })
    }
}

/// A change to one row of a view, as a watcher sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub key: String,
    /// `None`: the row was deleted.
    pub value: Option<Value>,
    /// The generation (KV bucket) the change came from.
    pub generation: String,
    /// Part of the current state delivered when a watch starts or follows a rebuild to a new
    /// generation (every row is delivered then, changed or not).
    pub initial: bool,
    /// The change's revision in its generation's bucket (for a deletion a switch of
    /// generation implies, the revision of the change it came with): a watch resumes after
    /// (`generation`, `revision`).
    pub revision: u64,
}

/// Where a resumed watch starts: after this change of this generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeAfter {
    pub generation: String,
    pub revision: u64,
}

/// What a watch delivers: a change, or, when a resumed watch finds that a rebuild has
/// replaced the generation it was following, `Reset`: forget every row, the new generation's
/// whole state follows.
#[derive(Debug, Clone, PartialEq)]
pub enum Watched {
    Change(Change),
    Reset { generation: String },
}

/// A watch of one view that survives rebuilds: it follows the registry to whichever
/// generation is served and, when a rebuild swaps in a new one, delivers that generation's
/// whole state (and deletes rows the old one had and the new one has not), then its changes.
/// So a watcher misses no change; after a swap it may see values again that did not change.
/// (`erp view <name> watch`.)
#[derive(Debug)]
pub struct ViewWatch {
    rx: tokio::sync::mpsc::Receiver<Result<Watched, ViewError>>,
    task: tokio::task::JoinHandle<()>,
}

impl ViewWatch {
    pub async fn start(
        js: async_nats::jetstream::Context,
        view: &str,
    ) -> Result<ViewWatch, ViewError> {
        ViewWatch::resume(js, view, None).await
    }

    /// A watch that, with `after`, carries on after that change: if its generation is still
    /// the one served, only the rows changed since (each at its latest value); if a rebuild
    /// replaced it, `Watched::Reset` and then the new generation's whole state.
    pub async fn resume(
        js: async_nats::jetstream::Context,
        view: &str,
        after: Option<ResumeAfter>,
    ) -> Result<ViewWatch, ViewError> {
        let unavailable = |detail: String| ViewError::Unavailable {
            view: view.to_owned(),
            detail,
        };
        let registry = js
            .get_key_value(crate::runtime::REGISTRY_BUCKET)
            .await
            .map_err(|e| unavailable(format!("the view registry: {e}")))?;
        let generations = registry
            .watch_with_history(view)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let task = tokio::spawn(follow(js, view.to_owned(), generations, after, tx));
        Ok(ViewWatch { rx, task })
    }

    /// The next change; `None` if the watch ended.
    pub async fn next(&mut self) -> Option<Result<Change, ViewError>> {
        loop {
            match self.rx.recv().await? {
                Ok(Watched::Change(change)) => return Some(Ok(change)),
                Ok(Watched::Reset { .. }) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The next change or reset; `None` if the watch ended.
    pub async fn next_watched(&mut self) -> Option<Result<Watched, ViewError>> {
        self.rx.recv().await
    }
}

impl Drop for ViewWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow(
    js: async_nats::jetstream::Context,
    view: String,
    mut generations: async_nats::jetstream::kv::Watch,
    mut resume: Option<ResumeAfter>,
    tx: tokio::sync::mpsc::Sender<Result<Watched, ViewError>>,
) {
    use futures::StreamExt;
    let fail = |detail: String| {
        Err(ViewError::Unavailable {
            view: view.clone(),
            detail,
        })
    };
    // The served generation's rows, and whether its initial state has all been delivered.
    let mut rows: Option<(String, async_nats::jetstream::kv::Watch)> = None;
    let mut caught_up = false;
    // Keys with a value in the current generation, and those of the one before a switch (any
    // the new generation does not re-deliver are then deleted for the watcher).
    let mut known: std::collections::BTreeSet<String> = Default::default();
    let mut previous: std::collections::BTreeSet<String> = Default::default();
    loop {
        tokio::select! {
            generation = generations.next() => {
                let entry = match generation {
                    Some(Ok(entry)) => entry,
                    Some(Err(e)) => { let _ = tx.send(fail(e.to_string())).await; return; }
                    None => return,
                };
                let Some(bucket) = serde_json::from_slice::<Value>(&entry.value)
                    .ok()
                    .and_then(|g| g["bucket"].as_str().map(str::to_owned))
                else {
                    continue;
                };
                if rows.as_ref().is_some_and(|(b, _)| *b == bucket) {
                    continue;
                }
                // A resumed watch goes on in its generation from the change after the last one
                // delivered; in another generation it starts over, and says so.
                let from = match resume.take() {
                    Some(after) if after.generation == bucket => Some(after.revision + 1),
                    Some(_) => {
                        let reset = Watched::Reset { generation: bucket.clone() };
                        if tx.send(Ok(reset)).await.is_err() {
                            return;
                        }
                        None
                    }
                    None => None,
                };
                let watch = match js.get_key_value(&bucket).await {
                    Ok(store) => match from {
                        Some(revision) => store.watch_from_revision(">", revision).await,
                        None => store.watch_with_history(">").await,
                    },
                    Err(e) => { let _ = tx.send(fail(e.to_string())).await; return; }
                };
                match watch {
                    Ok(watch) => {
                        rows = Some((bucket, watch));
                        caught_up = from.is_some();
                        previous.extend(std::mem::take(&mut known));
                    }
                    Err(e) => { let _ = tx.send(fail(e.to_string())).await; return; }
                }
            }
            entry = async {
                match rows.as_mut() {
                    Some((_, watch)) => watch.next().await,
                    None => std::future::pending().await,
                }
            } => {
                let entry = match entry {
                    Some(Ok(entry)) => entry,
                    Some(Err(e)) => { let _ = tx.send(fail(e.to_string())).await; return; }
                    None => { rows = None; continue; }
                };
                let initial = !caught_up;
                let value = match entry.operation {
                    async_nats::jetstream::kv::Operation::Put => {
                        serde_json::from_slice(&entry.value).ok()
                    }
                    _ => None,
                };
                let mut changes = Vec::new();
                if entry.key != "_status" {
                    if value.is_some() {
                        known.insert(entry.key.clone());
                    } else {
                        known.remove(&entry.key);
                    }
                    changes.push(Change {
                        key: entry.key,
                        value,
                        generation: entry.bucket.clone(),
                        initial,
                        revision: entry.revision,
                    });
                }
                if entry.delta == 0 && !caught_up {
                    caught_up = true;
                    for key in std::mem::take(&mut previous) {
                        if !known.contains(&key) {
                            changes.push(Change {
                                key,
                                value: None,
                                generation: entry.bucket.clone(),
                                initial: true,
                                revision: entry.revision,
                            });
                        }
                    }
                }
                for change in changes {
                    if tx.send(Ok(Watched::Change(change))).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
