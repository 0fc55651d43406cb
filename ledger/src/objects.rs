//! Whole objects (view and processor snapshots) kept in JetStream object stores beside the
//! ledger. An object is replaced whole: the store publishes the new object's description only
//! after all its chunks are stored, so a writer killed halfway leaves the previous one in place.

use std::time::Duration;

use async_nats::jetstream::{self, object_store};
use tokio::io::AsyncReadExt;

/// How long a read may make no progress: an object replaced while it is read loses its
/// chunks, and the read would then wait forever.
pub const READ_STALL: Duration = Duration::from_secs(5);

/// Why an object could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    #[error("object store `{bucket}`: {detail}")]
    Store { bucket: String, detail: String },
    #[error("object `{name}` was replaced while it was read")]
    Replaced { name: String },
    #[error("object `{name}`: {detail}")]
    Object { name: String, detail: String },
}

/// The object store `bucket`, created (file storage, `replicas` copies) if it does not exist.
pub async fn bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<object_store::ObjectStore, ObjectError> {
    let failed = |detail: String| ObjectError::Store {
        bucket: bucket.into(),
        detail,
    };
    let store = match js.get_object_store(bucket).await {
        Ok(store) => store,
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: bucket.into(),
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(|e| failed(e.to_string()))?,
    };
    crate::jetstream::check_stream_replicas(js, &format!("OBJ_{bucket}"), replicas)
        .await
        .map_err(|e| failed(e.to_string()))?;
    Ok(store)
}

/// The bytes of object `name`, `None` if there is none.
pub async fn read(
    store: &object_store::ObjectStore,
    name: &str,
) -> Result<Option<Vec<u8>>, ObjectError> {
    let failed = |detail: String| ObjectError::Object {
        name: name.into(),
        detail,
    };
    let mut object = match store.get(name).await {
        Ok(object) => object,
        Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e.to_string())),
    };
    let mut bytes = Vec::with_capacity(object.info().size);
    match tokio::time::timeout(READ_STALL, object.read_to_end(&mut bytes)).await {
        Ok(read) => read.map_err(|e| failed(e.to_string()))?,
        Err(_) => return Err(ObjectError::Replaced { name: name.into() }),
    };
    Ok(Some(bytes))
}

/// Stores `bytes` as object `name`, replacing the previous one once all of it is stored.
pub async fn write(
    store: &object_store::ObjectStore,
    name: &str,
    bytes: &[u8],
) -> Result<(), ObjectError> {
    write_from(store, name, &mut &*bytes).await
}

/// Stores what `reader` yields as object `name` (see `write`).
pub async fn write_from(
    store: &object_store::ObjectStore,
    name: &str,
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<(), ObjectError> {
    store
        .put(name, reader)
        .await
        .map(|_| ())
        .map_err(|e| ObjectError::Object {
            name: name.into(),
            detail: e.to_string(),
        })
}
