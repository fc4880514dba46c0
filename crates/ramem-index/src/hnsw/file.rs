//! The index on disk: `index-hnsw/header.json` (what was built, for which
//! memory, and the length and checksum of the links) and
//! `index-hnsw/links.bin` (levels and neighbour lists, little-endian). Each
//! file is written to a temporary name and renamed; the links go first and
//! the header last, so the header is the commit point: a header whose
//! checksum does not match the links it sits next to is reported, never
//! used. The layout is written down in docs/FORMAT.md.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::graph::{upper_starts, Graph, MAX_LEVEL};
use super::HnswError;

/// Directory of the index inside a memory directory.
pub const INDEX_DIR: &str = "index-hnsw";
/// The header file inside [`INDEX_DIR`].
pub const HEADER_FILE: &str = "header.json";
/// The links file inside [`INDEX_DIR`].
pub const LINKS_FILE: &str = "links.bin";
/// The `format` field of the header.
pub const FORMAT_NAME: &str = "ramem-hnsw";
/// The version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// `index-hnsw/header.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HnswHeader {
    pub format: String,
    pub version: u32,
    /// Always "inner_product" (cosine on unit keys).
    pub metric: String,
    pub m: usize,
    pub m0: usize,
    pub ef_construction: usize,
    pub seed: u64,
    /// Rows indexed: global ids `0..count` of the memory.
    pub count: u64,
    pub dim: usize,
    /// How the memory stored its keys when the index was built ("f16"/"f32").
    pub key_dtype: String,
    pub entry: u32,
    pub max_level: u8,
    /// Upper-level blocks (the sum of all levels).
    pub upper_blocks: u64,
    pub links_bytes: u64,
    /// 64-bit checksum of links.bin, 16 hex digits.
    pub links_checksum: String,
    /// Seconds the build took.
    pub build_seconds: f64,
}

/// Bytes of links.bin for a graph of `n` nodes.
fn links_len(n: usize, m: usize, m0: usize, upper_blocks: usize) -> Option<u64> {
    let levels = n.checked_next_multiple_of(4)? as u64;
    let l0 = (n as u64).checked_mul(m0 as u64 + 1)?.checked_mul(4)?;
    let up = (upper_blocks as u64)
        .checked_mul(m as u64 + 1)?
        .checked_mul(4)?;
    levels.checked_add(l0)?.checked_add(up)
}

/// A fast 64-bit checksum (word-wise multiply-xor) of `bytes`.
pub(crate) fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(0x0100_0000_01b3).rotate_left(29);
    }
    for &b in chunks.remainder() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h ^ (h >> 33)
}

fn io_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> HnswError + 'a {
    move |error| HnswError::Io {
        path: path.to_path_buf(),
        action,
        error,
    }
}

/// Writes `graph` under `dir/index-hnsw/`; `header` carries everything but
/// the fields derived from the graph and links (filled in here).
pub(crate) fn save(
    dir: &Path,
    graph: &Graph,
    mut header: HnswHeader,
) -> Result<PathBuf, HnswError> {
    let idx = dir.join(INDEX_DIR);
    std::fs::create_dir_all(&idx).map_err(io_err(&idx, "create directory"))?;
    let n = graph.len();
    let mut bytes = Vec::with_capacity(
        links_len(n, graph.m, graph.m0, graph.upper.len() / (graph.m + 1)).unwrap_or(0) as usize,
    );
    bytes.extend_from_slice(&graph.levels);
    bytes.resize(n.next_multiple_of(4), 0);
    for v in graph.level0.iter().chain(&graph.upper) {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    header.format = FORMAT_NAME.into();
    header.version = FORMAT_VERSION;
    header.metric = "inner_product".into();
    header.m = graph.m;
    header.m0 = graph.m0;
    header.count = n as u64;
    header.entry = graph.entry;
    header.max_level = graph.max_level;
    header.upper_blocks = (graph.upper.len() / (graph.m + 1)) as u64;
    header.links_bytes = bytes.len() as u64;
    header.links_checksum = format!("{:016x}", checksum(&bytes));
    ramem_store::write_atomic(idx.join(LINKS_FILE), &bytes)?;
    let json = serde_json::to_vec_pretty(&header).expect("the header serialises");
    ramem_store::write_atomic(idx.join(HEADER_FILE), &json)?;
    Ok(idx)
}

/// Reads the header of the index under `dir` (a memory directory).
pub(crate) fn read_header(dir: &Path) -> Result<HnswHeader, HnswError> {
    let path = dir.join(INDEX_DIR).join(HEADER_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(HnswError::Missing { path })
        }
        Err(e) => return Err(io_err(&path, "read")(e)),
    };
    let header: HnswHeader = serde_json::from_slice(&text).map_err(|e| HnswError::Corrupt {
        path: path.clone(),
        reason: format!("not a valid index header: {e}"),
    })?;
    if header.format != FORMAT_NAME {
        return Err(HnswError::Corrupt {
            path,
            reason: format!("format is {:?}, expected {FORMAT_NAME:?}", header.format),
        });
    }
    if header.version > FORMAT_VERSION {
        return Err(HnswError::Corrupt {
            path,
            reason: format!(
                "index format version {} is newer than this version of ramem reads (up to {FORMAT_VERSION}); rebuild it with `ramem index build`",
                header.version
            ),
        });
    }
    Ok(header)
}

/// Reads and checks the links of the index under `dir`, against `header`.
pub(crate) fn read_graph(dir: &Path, header: &HnswHeader) -> Result<Graph, HnswError> {
    let hpath = dir.join(INDEX_DIR).join(HEADER_FILE);
    let path = dir.join(INDEX_DIR).join(LINKS_FILE);
    let corrupt = |p: &Path, reason: String| HnswError::Corrupt {
        path: p.to_path_buf(),
        reason,
    };
    let n = usize::try_from(header.count)
        .ok()
        .filter(|&n| n < u32::MAX as usize)
        .ok_or_else(|| corrupt(&hpath, format!("count {} is out of range", header.count)))?;
    if header.m < 2 || header.m0 < header.m || header.m0 > 4096 {
        return Err(corrupt(
            &hpath,
            format!("bad link widths m = {}, m0 = {}", header.m, header.m0),
        ));
    }
    let upper_blocks = usize::try_from(header.upper_blocks)
        .map_err(|_| corrupt(&hpath, "upper_blocks is out of range".into()))?;
    let want = links_len(n, header.m, header.m0, upper_blocks)
        .ok_or_else(|| corrupt(&hpath, "sizes overflow".into()))?;
    if want != header.links_bytes {
        return Err(corrupt(
            &hpath,
            format!(
                "links_bytes is {} but count, m0 and upper_blocks make {want}",
                header.links_bytes
            ),
        ));
    }
    let actual = std::fs::metadata(&path)
        .map_err(io_err(&path, "read metadata of"))?
        .len();
    if actual < want {
        return Err(corrupt(
            &path,
            format!("truncated: the index needs {want} bytes but the file has {actual}; rebuild it with `ramem index build`"),
        ));
    }
    if actual > want {
        return Err(corrupt(
            &path,
            format!("{actual} bytes, but the header describes {want}; rebuild it with `ramem index build`"),
        ));
    }
    let bytes = std::fs::read(&path).map_err(io_err(&path, "read"))?;
    if bytes.len() as u64 != want {
        return Err(corrupt(
            &path,
            format!("changed size while being read ({} bytes)", bytes.len()),
        ));
    }
    let sum = format!("{:016x}", checksum(&bytes));
    if sum != header.links_checksum {
        return Err(corrupt(
            &path,
            format!(
                "checksum {sum} does not match {} in {}: the file is damaged or from another build; rebuild it with `ramem index build`",
                header.links_checksum,
                hpath.display()
            ),
        ));
    }
    let levels = bytes[..n].to_vec();
    let mut words = bytes[n.next_multiple_of(4)..]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")));
    let level0: Vec<u32> = words.by_ref().take(n * (header.m0 + 1)).collect();
    let upper: Vec<u32> = words.collect();
    let (upper_start, blocks) = upper_starts(&levels);
    if blocks >= u32::MAX as usize {
        return Err(corrupt(
            &path,
            format!("{blocks} upper-level lists are too many"),
        ));
    }
    if blocks != upper_blocks {
        return Err(corrupt(
            &path,
            format!("levels add up to {blocks} upper blocks, the header says {upper_blocks}"),
        ));
    }
    let graph = Graph {
        m: header.m,
        m0: header.m0,
        levels,
        level0,
        upper_start,
        upper,
        entry: header.entry,
        max_level: header.max_level,
    };
    validate(&graph).map_err(|reason| corrupt(&path, reason))?;
    Ok(graph)
}

/// Structural checks, so a damaged file can never make a search index out
/// of bounds.
fn validate(g: &Graph) -> Result<(), String> {
    let n = g.len();
    if n == 0 {
        return Ok(());
    }
    if g.entry as usize >= n {
        return Err(format!("entry node {} is not below the count {n}", g.entry));
    }
    if g.max_level > MAX_LEVEL || g.levels[g.entry as usize] != g.max_level {
        return Err(format!(
            "entry node {} does not have the top level {}",
            g.entry, g.max_level
        ));
    }
    if let Some(i) = g.levels.iter().position(|&l| l > g.max_level) {
        return Err(format!(
            "node {i} has level {} above the top level {}",
            g.levels[i], g.max_level
        ));
    }
    let check = |list: &[u32], w: usize, node: usize, level: usize| -> Result<(), String> {
        let count = list[0] as usize;
        if count >= w {
            return Err(format!(
                "node {node}, level {level}: {count} links, more than {}",
                w - 1
            ));
        }
        for &id in &list[1..=count] {
            // A link on level l must lead to a node that has level l.
            if id as usize >= n || (g.levels[id as usize] as usize) < level {
                return Err(format!(
                    "node {node}, level {level}: a link to node {id}, which is not a node of that level"
                ));
            }
        }
        Ok(())
    };
    let w0 = g.m0 + 1;
    for (node, list) in g.level0.chunks_exact(w0).enumerate() {
        check(list, w0, node, 0)?;
    }
    let w = g.m + 1;
    for node in 0..n {
        for level in 1..=g.levels[node] as usize {
            let start = (g.upper_start[node] as usize + level - 1) * w;
            check(&g.upper[start..start + w], w, node, level)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph() -> Graph {
        // Node 1 has level 1, the others level 0.
        let mut g = Graph::new(2, 4, vec![0, 1, 0]);
        g.entry = 1;
        g.max_level = 1;
        g.set_links(0, 0, &[1, 2]);
        g.set_links(1, 0, &[0]);
        g.set_links(2, 0, &[0, 1]);
        g
    }

    #[test]
    fn validate_refuses_links_a_search_could_not_follow() {
        assert_eq!(validate(&graph()), Ok(()));
        let mut g = graph();
        g.set_links(1, 1, &[2]);
        let err = validate(&g).unwrap_err();
        assert!(err.contains("node 1, level 1"), "{err}");
        let mut g = graph();
        g.level0[2 * 5 + 2] = 3;
        assert!(validate(&g).unwrap_err().contains("node 3"));
        let mut g = graph();
        g.level0[0] = 5;
        assert!(validate(&g).unwrap_err().contains("more than 4"));
        let mut g = graph();
        g.entry = 0;
        assert!(validate(&g).unwrap_err().contains("top level"));
    }
}
