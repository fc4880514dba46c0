//! The connection to a Milvus server: `milvus://HOST:PORT/COLLECTION`
//! parsed, a client on a runtime of its own (callers are synchronous),
//! every call bounded by a timeout and retried with a bounded back-off when
//! the server is unreachable, and errors that name the address.

use std::future::Future;
use std::time::Duration;

use milvus::v2::prelude::*;
use ramem_index::SearchError;
use ramem_store::StoreError;
use std::result::Result;

/// A memory's address on a Milvus server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MilvusUrl {
    /// `HOST:PORT`.
    pub address: String,
    pub collection: String,
}

impl MilvusUrl {
    /// `milvus://HOST:PORT/COLLECTION` (the port defaults to 19530).
    pub fn parse(text: &str) -> Result<MilvusUrl, MilvusError> {
        let bad = |why: &str| MilvusError::Address {
            url: text.to_string(),
            reason: why.to_string(),
        };
        let rest = text
            .strip_prefix("milvus://")
            .ok_or_else(|| bad("it does not start with milvus://"))?;
        let (address, collection) = rest
            .split_once('/')
            .ok_or_else(|| bad("it names no collection (milvus://HOST:PORT/COLLECTION)"))?;
        if address.is_empty() {
            return Err(bad("it names no host"));
        }
        let collection = collection.trim_end_matches('/');
        let valid = !collection.is_empty()
            && collection
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !collection.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(bad(
                "a collection name is letters, digits and underscores, not starting with a digit",
            ));
        }
        let address = match address.contains(':') {
            true => address.to_string(),
            false => format!("{address}:19530"),
        };
        Ok(MilvusUrl {
            address,
            collection: collection.to_string(),
        })
    }
}

impl std::fmt::Display for MilvusUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "milvus://{}/{}", self.address, self.collection)
    }
}

/// What can go wrong talking to Milvus; every message names the address.
#[derive(Debug, thiserror::Error)]
pub enum MilvusError {
    #[error("{url}: not a Milvus memory address: {reason}")]
    Address { url: String, reason: String },
    #[error("{address}: the Milvus server cannot be reached ({reason}); is it running?")]
    Unavailable { address: String, reason: String },
    #[error("{address}: the Milvus server did not answer within {seconds:.0} s ({what})")]
    TimedOut {
        address: String,
        seconds: f64,
        what: String,
    },
    #[error("{url}: {reason}")]
    Refused { url: String, reason: String },
}

impl From<MilvusError> for StoreError {
    fn from(e: MilvusError) -> StoreError {
        StoreError::Remote {
            location: match &e {
                MilvusError::Address { url, .. } | MilvusError::Refused { url, .. } => url.clone(),
                MilvusError::Unavailable { address, .. }
                | MilvusError::TimedOut { address, .. } => address.clone(),
            },
            reason: e.to_string(),
        }
    }
}

impl From<MilvusError> for SearchError {
    fn from(e: MilvusError) -> SearchError {
        match e {
            MilvusError::Unavailable { address, reason } => SearchError::Unavailable {
                engine: format!("Milvus at {address}"),
                reason,
            },
            MilvusError::TimedOut {
                address, seconds, ..
            } => SearchError::TimedOut {
                engine: format!("Milvus at {address}"),
                seconds,
            },
            other => SearchError::Store(other.into()),
        }
    }
}

/// How long one call may take, and how long an unreachable server is
/// waited for.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// The longest one call may take, and the longest a call keeps trying
    /// a server that went away (`RAMEM_MILVUS_TIMEOUT` seconds, 60 by
    /// default).
    pub timeout: Duration,
    /// Tries to connect at the start (the first included), waiting 0.2 s,
    /// 0.4 s, ... between them: a server that is not there is said so at
    /// once.
    pub tries: u32,
}

impl Default for Patience {
    fn default() -> Self {
        let seconds = std::env::var("RAMEM_MILVUS_TIMEOUT")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .unwrap_or(60.0);
        Patience {
            timeout: Duration::from_secs_f64(seconds),
            tries: 4,
        }
    }
}

/// A client of one Milvus server, for synchronous callers.
pub struct Milvus {
    pub url: MilvusUrl,
    /// Taken out only when dropped.
    runtime: Option<tokio::runtime::Runtime>,
    client: ClientV2,
    patience: Patience,
}

/// Whether an SDK error means the server could not be reached (worth
/// another try) rather than a refusal.
fn unreachable(e: &milvus::v2::error::Error) -> bool {
    let text = format!("{e:?}").to_ascii_lowercase();
    [
        "transport",
        "connect",
        "unavailable",
        "broken pipe",
        "connection reset",
        "deadline",
    ]
    .iter()
    .any(|word| text.contains(word))
}

/// What loading a collection is called in messages (a load is never
/// answered with another load).
pub(crate) const LOADING: &str = "loading the collection";

/// Whether an SDK error says the collection is not loaded for reading.
fn released(e: &milvus::v2::error::Error) -> bool {
    let text = format!("{e:?}").to_ascii_lowercase();
    text.contains("released") || text.contains("not loaded")
}

impl Milvus {
    /// Connects to the server of `url`.
    pub fn connect(url: &MilvusUrl) -> Result<Milvus, MilvusError> {
        Milvus::connect_with(url, Patience::default())
    }

    pub fn connect_with(url: &MilvusUrl, patience: Patience) -> Result<Milvus, MilvusError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| MilvusError::Unavailable {
                address: url.address.clone(),
                reason: format!("cannot start the client's runtime: {e}"),
            })?;
        let config = ConnectConfig::new()
            .uri(format!("http://{}", url.address))
            .connect_timeout(patience.timeout.min(Duration::from_secs(10)));
        let mut client = None;
        let mut last = String::new();
        for attempt in 0..patience.tries.max(1) {
            if attempt > 0 {
                std::thread::sleep(back_off(attempt));
            }
            let connected = block_on(&runtime, async {
                tokio::time::timeout(patience.timeout, ClientV2::new(&config)).await
            });
            match connected {
                Ok(Ok(c)) => {
                    client = Some(c);
                    break;
                }
                Ok(Err(e)) => last = format!("{e}"),
                Err(_) => {
                    last = format!("no answer within {:.0} s", patience.timeout.as_secs_f64())
                }
            }
        }
        let client = client.ok_or_else(|| MilvusError::Unavailable {
            address: url.address.clone(),
            reason: last,
        })?;
        client.set_rpc_deadline(patience.timeout);
        Ok(Milvus {
            url: url.clone(),
            runtime: Some(runtime),
            client,
            patience,
        })
    }

    /// Runs one call (`what`, for messages), bounded by the timeout. While
    /// the server is unreachable the call is tried again, with a bounded
    /// back-off, until the timeout has passed since the first failure: a
    /// server that restarts within it is ridden out.
    pub fn call<T, F, Fut>(&self, what: &str, make: F) -> Result<T, MilvusError>
    where
        T: Send,
        F: Fn(ClientV2) -> Fut + Sync,
        Fut: Future<Output = milvus::v2::error::Result<T>> + Send,
    {
        let mut first_failure: Option<std::time::Instant> = None;
        let mut attempt = 0u32;
        let mut reloaded = false;
        loop {
            let client = self.client.clone();
            let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
            let done = block_on(runtime, async {
                tokio::time::timeout(self.patience.timeout, make(client)).await
            });
            let last = match done {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) if unreachable(&e) => format!("{e}"),
                // A server that restarted holds its collections released
                // until they are loaded again.
                Ok(Err(e)) if !reloaded && what != LOADING && released(&e) => {
                    reloaded = true;
                    self.load()?;
                    continue;
                }
                Ok(Err(e)) => {
                    return Err(MilvusError::Refused {
                        url: self.url.to_string(),
                        reason: format!("{what}: {e}"),
                    })
                }
                Err(_) => {
                    return Err(MilvusError::TimedOut {
                        address: self.url.address.clone(),
                        seconds: self.patience.timeout.as_secs_f64(),
                        what: what.to_string(),
                    })
                }
            };
            let since = *first_failure.get_or_insert_with(std::time::Instant::now);
            attempt += 1;
            let wait = back_off(attempt);
            if since.elapsed() + wait > self.patience.timeout {
                return Err(MilvusError::Unavailable {
                    address: self.url.address.clone(),
                    reason: format!("{what}: {last}"),
                });
            }
            if attempt == 1 {
                tracing::warn!(
                    "{}: the server cannot be reached ({what}); trying again for up to {:.0} s",
                    self.url.address,
                    self.patience.timeout.as_secs_f64()
                );
            }
            std::thread::sleep(wait);
        }
    }
}

impl Drop for Milvus {
    /// Stops the runtime without waiting for it, which is allowed anywhere
    /// (a server's async handlers drop memories too).
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `future` to completion on `runtime` from synchronous code; called
/// from within another runtime (a server's handler), it waits on a thread
/// of its own, as a runtime cannot be entered from inside one.
fn block_on<F: Future + Send>(runtime: &tokio::runtime::Runtime, future: F) -> F::Output
where
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|scope| {
            scope
                .spawn(|| runtime.block_on(future))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    } else {
        runtime.block_on(future)
    }
}

/// The wait before try `attempt` (from 1): 0.2 s doubling, at most 3 s.
fn back_off(attempt: u32) -> Duration {
    Duration::from_millis((200u64 << (attempt - 1).min(4)).min(3000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_say_what_is_wrong() {
        let url = MilvusUrl::parse("milvus://127.0.0.1:19531/fashion_mem").unwrap();
        assert_eq!(url.address, "127.0.0.1:19531");
        assert_eq!(url.collection, "fashion_mem");
        assert_eq!(url.to_string(), "milvus://127.0.0.1:19531/fashion_mem");
        assert_eq!(
            MilvusUrl::parse("milvus://db.example/m").unwrap().address,
            "db.example:19530"
        );
        for (bad, why) in [
            ("http://h:1/m", "milvus://"),
            ("milvus://h:1", "no collection"),
            ("milvus://h:1/", "letters, digits"),
            ("milvus://h:1/my-mem", "letters, digits"),
            ("milvus:///m", "no host"),
        ] {
            let err = MilvusUrl::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains(why), "{bad}: {err}");
        }
        assert_eq!(back_off(1), Duration::from_millis(200));
        assert_eq!(back_off(9), Duration::from_millis(3000));
    }
}
