//! [`Keys`]: the one borrowed key type. Key rows addressed by global row
//! id, wherever they live: one borrowed matrix, or the memory-mapped shards
//! of a memory.

use half::f16;
use ramem_store::memory::{KeysData, KeysView, Memory, RowSet, ValueKind};

use crate::kernels;
use crate::SearchError;

/// The element types keys are stored in, with their gather dot kernel.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    fn gather_kernel() -> fn(&[&[Self]], &[f32], &mut [f32]);
    /// The same dots for rows already in cache (no prefetching).
    fn gather_cached_kernel() -> fn(&[&[Self]], &[f32], &mut [f32]);
    fn widen(src: &[Self], dst: &mut [f32]);
    /// The row itself where it is f32 already (no copy needed).
    fn as_f32(row: &[Self]) -> Option<&[f32]>;

    /// `row` as f32: itself, or widened into `scratch`.
    #[inline(always)]
    fn widened<'b>(row: &'b [Self], scratch: &'b mut [f32]) -> &'b [f32] {
        match Self::as_f32(row) {
            Some(r) => r,
            None => {
                Self::widen(row, scratch);
                scratch
            }
        }
    }
}

impl Elem for f32 {
    fn gather_kernel() -> fn(&[&[f32]], &[f32], &mut [f32]) {
        kernels::pick_gather_f32()
    }
    fn gather_cached_kernel() -> fn(&[&[f32]], &[f32], &mut [f32]) {
        kernels::pick_gather_cached_f32()
    }
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn as_f32(row: &[f32]) -> Option<&[f32]> {
        Some(row)
    }
}

impl Elem for f16 {
    fn gather_kernel() -> fn(&[&[f16]], &[f32], &mut [f32]) {
        kernels::pick_gather_f16()
    }
    fn gather_cached_kernel() -> fn(&[&[f16]], &[f32], &mut [f32]) {
        kernels::pick_gather_cached_f16()
    }
    fn widen(src: &[f16], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
    fn as_f32(_: &[f16]) -> Option<&[f32]> {
        None
    }
}

/// Rows of one element type split over segments (shards) of consecutive ids.
pub(crate) struct Rows<'a, T> {
    pub(crate) segments: Vec<&'a [T]>,
    /// Global id of each segment's first row.
    pub(crate) starts: Vec<usize>,
    /// Rows per segment when every segment but the last has the same count
    /// (then a row is found by division), else 0 (binary search).
    uniform: usize,
    pub dim: usize,
    pub len: usize,
    pub gather: fn(&[&[T]], &[f32], &mut [f32]),
    /// `gather` for rows already in cache.
    pub gather_cached: fn(&[&[T]], &[f32], &mut [f32]),
}

impl<'a, T: Elem> Rows<'a, T> {
    fn new(segments: Vec<&'a [T]>, dim: usize) -> Rows<'a, T> {
        let mut starts = Vec::with_capacity(segments.len());
        let mut len = 0;
        for s in &segments {
            starts.push(len);
            len += s.len() / dim;
        }
        let counts: Vec<usize> = segments.iter().map(|s| s.len() / dim).collect();
        let uniform = match counts.split_last() {
            Some((last, rest)) if !rest.is_empty() => {
                let r = rest[0];
                if r > 0 && rest.iter().all(|&c| c == r) && *last <= r {
                    r
                } else {
                    0
                }
            }
            Some((last, _)) => (*last).max(1),
            None => 1,
        };
        Rows {
            segments,
            starts,
            uniform,
            dim,
            len,
            gather: T::gather_kernel(),
            gather_cached: T::gather_cached_kernel(),
        }
    }

    /// Row `id` (`id < len`).
    #[inline(always)]
    pub fn row(&self, id: u32) -> &'a [T] {
        let id = id as usize;
        let (seg, local) = match id.checked_div(self.uniform) {
            Some(seg) => (seg, id - seg * self.uniform),
            None => {
                let s = self.starts.partition_point(|&st| st <= id) - 1;
                (s, id - self.starts[s])
            }
        };
        &self.segments[seg][local * self.dim..(local + 1) * self.dim]
    }
}

/// A borrowed key matrix: rows of one element type (f32, or f16 to halve
/// the bytes a search reads) addressed by global row id, in one slice or
/// split over segments of consecutive ids (a memory's memory-mapped shards).
/// Nothing is copied; a row is a slice of the caller's (or the memory
/// map's) data. Every search in this crate reads keys through it. The keys
/// of a memory with deleted entries carry them: searches skip those rows.
pub struct Keys<'a>(pub(crate) Typed<'a>, pub(crate) Option<&'a RowSet>);

pub(crate) enum Typed<'a> {
    F16(Rows<'a, f16>),
    F32(Rows<'a, f32>),
}

/// One segment of a key matrix, as stored.
#[derive(Clone, Copy)]
pub(crate) enum Segment<'a> {
    F16(&'a [f16]),
    F32(&'a [f32]),
}

impl<'a> Keys<'a> {
    /// The rows of one f32 matrix, ids `0..data.len() / dim`.
    pub fn f32(data: &'a [f32], dim: usize) -> Result<Keys<'a>, SearchError> {
        check_ragged(data.len(), dim)?;
        Ok(Keys(Typed::F32(Rows::new(vec![data], dim)), None))
    }

    /// The rows of one f16 matrix, ids `0..data.len() / dim`.
    pub fn f16(data: &'a [f16], dim: usize) -> Result<Keys<'a>, SearchError> {
        check_ragged(data.len(), dim)?;
        Ok(Keys(Typed::F16(Rows::new(vec![data], dim)), None))
    }

    /// Every key of `memory`, by global row id, borrowed from its memory maps.
    pub fn of_memory(memory: &'a Memory) -> Result<Keys<'a>, SearchError> {
        let views = (0..memory.shard_count())
            .map(|i| memory.shard_keys(i))
            .collect();
        Keys::of_views(memory, views, memory.key_dim())
    }

    /// Every `kind` value of `memory` (its caption embeddings, say), by
    /// global row id, searched like keys; `None` when the memory has no
    /// `kind` values.
    pub fn of_memory_values(
        memory: &'a Memory,
        kind: ValueKind,
    ) -> Result<Option<Keys<'a>>, SearchError> {
        let Some(dim) = memory.value_dim(kind) else {
            return Ok(None);
        };
        let views = (0..memory.shard_count())
            .filter_map(|i| memory.shard_values(i, kind))
            .collect();
        Keys::of_views(memory, views, dim).map(Some)
    }

    /// The matrices of `memory`'s shards, in order, as one key set that
    /// skips the memory's deleted entries.
    fn of_views(
        memory: &'a Memory,
        views: Vec<KeysView<'a>>,
        dim: usize,
    ) -> Result<Keys<'a>, SearchError> {
        if dim == 0 {
            return Err(SearchError::ZeroDim);
        }
        let mut f16_segments = Vec::new();
        let mut f32_segments = Vec::new();
        for view in &views {
            match view.data {
                KeysData::F16(d) => f16_segments.push(d),
                KeysData::F32(d) => f32_segments.push(d),
            }
        }
        Ok(match (f16_segments.is_empty(), f32_segments.is_empty()) {
            (_, true) => Keys(Typed::F16(Rows::new(f16_segments, dim)), memory.deleted()),
            (true, false) => Keys(Typed::F32(Rows::new(f32_segments, dim)), memory.deleted()),
            (false, false) => {
                return Err(SearchError::MixedKeyTypes {
                    memory: memory.dir().to_path_buf(),
                })
            }
        })
    }

    /// The rows searches skip (a memory's deleted entries), if any.
    pub fn skipped(&self) -> Option<&'a RowSet> {
        self.1
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        match &self.0 {
            Typed::F16(r) => r.len,
            Typed::F32(r) => r.len,
        }
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows() == 0
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        match &self.0 {
            Typed::F16(r) => r.dim,
            Typed::F32(r) => r.dim,
        }
    }

    /// How the rows are stored: `"f16"` or `"f32"`.
    pub fn dtype_name(&self) -> &'static str {
        match &self.0 {
            Typed::F16(_) => "f16",
            Typed::F32(_) => "f32",
        }
    }

    /// Bytes each row takes where it is stored.
    pub fn bytes_per_row(&self) -> usize {
        match &self.0 {
            Typed::F16(r) => r.dim * 2,
            Typed::F32(r) => r.dim * 4,
        }
    }

    /// The segments with the global id of each one's first row.
    pub(crate) fn segments(&self) -> Vec<(usize, Segment<'a>)> {
        match &self.0 {
            Typed::F16(r) => r
                .starts
                .iter()
                .zip(&r.segments)
                .map(|(&start, &s)| (start, Segment::F16(s)))
                .collect(),
            Typed::F32(r) => r
                .starts
                .iter()
                .zip(&r.segments)
                .map(|(&start, &s)| (start, Segment::F32(s)))
                .collect(),
        }
    }
}

fn check_ragged(len: usize, dim: usize) -> Result<(), SearchError> {
    if dim == 0 {
        Err(SearchError::ZeroDim)
    } else if len.is_multiple_of(dim) {
        Ok(())
    } else {
        Err(SearchError::RaggedKeys { len, dim })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_across_uneven_segments() {
        let a: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let b: Vec<f32> = (6..8).map(|v| v as f32).collect();
        let c: Vec<f32> = (8..14).map(|v| v as f32).collect();
        let rows = Rows::new(vec![&a[..], &b[..], &c[..]], 2);
        assert_eq!(rows.len, 7);
        assert_eq!(rows.uniform, 0);
        for id in 0..7u32 {
            assert_eq!(rows.row(id), &[2.0 * id as f32, 2.0 * id as f32 + 1.0]);
        }
        let uni = Rows::new(vec![&a[..], &c[..], &b[..]], 2);
        assert_eq!(uni.uniform, 3);
        assert_eq!(uni.row(6), &[6.0, 7.0]);
        assert_eq!(uni.row(4), &[10.0, 11.0]);
    }
}
