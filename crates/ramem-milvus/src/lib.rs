//! A ramem memory on a Milvus collection.
//!
//! A memory too large for one machine lives in Milvus (or any server that
//! speaks its protocol: Milvus standalone or distributed, milvus-lite,
//! Zilliz Cloud). [`push`] copies a memory directory into a collection
//! (resumably, refusing one with other settings) and [`pull`] copies it
//! back. [`MilvusMemory`] reads and searches the collection through the
//! same interfaces as a memory directory ([`ramem_store::memory::MemoryView`],
//! [`ramem_index::SearchableMemory`]), so a study, a recognizer's training,
//! `ramem predict` and `ramem serve` run on it unchanged: their memory
//! location is `milvus://HOST:PORT/COLLECTION`.
//!
//! Every call to the server is retried while the server is unreachable, up
//! to a patience (`RAMEM_MILVUS_TIMEOUT` seconds, 60 by default), and then
//! fails naming the address and what was being done.

pub mod client;
pub mod collection;
pub mod memory;
pub mod transfer;

pub use client::{MilvusError, MilvusUrl, Patience};
pub use collection::{IndexKind, MemoryRecord};
pub use memory::{MilvusMemory, MilvusSearch};
pub use transfer::{pull, push, PullReport, PushOptions, PushReport, TransferError, PULL_MAP_FILE};
