//! Key rows addressed by global row id, wherever they live: one borrowed
//! matrix, or the memory-mapped shards of a memory. Nothing is copied; a
//! row is a slice of the caller's (or the memory map's) data.

use half::f16;
use ramem_store::memory::{KeysData, Memory};

use crate::kernels;
use crate::{IndexError, Keys};

/// The element types keys are stored in, with their gather dot kernel.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    fn gather_kernel() -> fn(&[&[Self]], &[f32], &mut [f32]);
    fn widen(src: &[Self], dst: &mut [f32]);
}

impl Elem for f32 {
    fn gather_kernel() -> fn(&[&[f32]], &[f32], &mut [f32]) {
        kernels::pick_gather_f32()
    }
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl Elem for f16 {
    fn gather_kernel() -> fn(&[&[f16]], &[f32], &mut [f32]) {
        kernels::pick_gather_f16()
    }
    fn widen(src: &[f16], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
}

/// Rows of one element type split over segments (shards) of consecutive ids.
pub(crate) struct Rows<'a, T> {
    segments: Vec<&'a [T]>,
    /// Global id of each segment's first row.
    starts: Vec<usize>,
    /// Rows per segment when every segment but the last has the same count
    /// (then a row is found by division), else 0 (binary search).
    uniform: usize,
    pub dim: usize,
    pub len: usize,
    pub gather: fn(&[&[T]], &[f32], &mut [f32]),
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

/// Key rows of either element type, by global row id.
pub struct Vectors<'a>(pub(crate) Typed<'a>);

pub(crate) enum Typed<'a> {
    F16(Rows<'a, f16>),
    F32(Rows<'a, f32>),
}

impl<'a> Vectors<'a> {
    /// The rows of one key matrix, ids `0..keys.rows()`.
    pub fn from_keys(keys: &Keys<'a>) -> Result<Vectors<'a>, IndexError> {
        let dim = keys.dim();
        if dim == 0 {
            return Err(IndexError::ZeroDim);
        }
        Ok(match *keys {
            Keys::F16 { data, dim } => {
                check_ragged(data.len(), dim)?;
                Vectors(Typed::F16(Rows::new(vec![data], dim)))
            }
            Keys::F32 { data, dim } => {
                check_ragged(data.len(), dim)?;
                Vectors(Typed::F32(Rows::new(vec![data], dim)))
            }
        })
    }

    /// Every key of `memory`, by global row id, borrowed from its memory maps.
    pub fn from_memory(memory: &'a Memory) -> Result<Vectors<'a>, IndexError> {
        let dim = memory.key_dim();
        if dim == 0 {
            return Err(IndexError::ZeroDim);
        }
        let views: Vec<_> = (0..memory.shard_count())
            .map(|i| memory.shard_keys(i))
            .collect();
        let all_f16 = views.iter().all(|v| matches!(v.data, KeysData::F16(_)));
        Ok(if all_f16 {
            Vectors(Typed::F16(Rows::new(
                views
                    .iter()
                    .map(|v| match v.data {
                        KeysData::F16(d) => d,
                        KeysData::F32(_) => unreachable!("checked above"),
                    })
                    .collect(),
                dim,
            )))
        } else {
            Vectors(Typed::F32(Rows::new(
                views
                    .iter()
                    .filter_map(|v| match v.data {
                        KeysData::F32(d) => Some(d),
                        KeysData::F16(_) => None,
                    })
                    .collect(),
                dim,
            )))
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        match &self.0 {
            Typed::F16(r) => r.len,
            Typed::F32(r) => r.len,
        }
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        match &self.0 {
            Typed::F16(r) => r.dim,
            Typed::F32(r) => r.dim,
        }
    }

    /// Bytes each row takes where it is stored.
    pub fn bytes_per_row(&self) -> usize {
        match &self.0 {
            Typed::F16(r) => r.dim * 2,
            Typed::F32(r) => r.dim * 4,
        }
    }
}

fn check_ragged(len: usize, dim: usize) -> Result<(), IndexError> {
    if len.is_multiple_of(dim) {
        Ok(())
    } else {
        Err(IndexError::RaggedKeys { len, dim })
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
