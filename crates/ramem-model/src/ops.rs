//! Tensor operations the models share: a matrix product whose backward
//! pass skips its data operand.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use candle_nn::Linear;

/// Which operand of [`matmul_frozen`] is data rather than a function of the
/// parameters.
#[derive(Clone, Copy)]
pub(crate) enum Frozen {
    Lhs,
    Rhs,
}

/// `a.matmul(c)` (or `c.matmul(a)`) for a constant `c` (queries, neighbour
/// keys or values): the same product, but the backward pass only computes
/// the gradient of `a`. A plain matmul also differentiates the data operand,
/// which for the neighbour keys and values is a batch of (k x d) products and
/// two full-size tensors per step that nothing reads.
pub(crate) fn matmul_frozen(a: &Tensor, c: &Tensor, frozen: Frozen) -> candle_core::Result<Tensor> {
    if !a.device().is_cpu() || !a.track_op() {
        // The op below has a CPU forward only; elsewhere take the plain route.
        // cuBLAS takes a matrix operand only with packed rows (or columns),
        // forward and backward: the neighbours' share of the attention
        // weights is a narrowed view (row stride k + 1), so it is copied.
        return match frozen {
            Frozen::Rhs if !a.device().is_cpu() => a.contiguous()?.matmul(c),
            Frozen::Rhs => a.matmul(c),
            Frozen::Lhs => c.matmul(a),
        };
    }
    let detached = a.detach();
    let product = match frozen {
        Frozen::Rhs => detached.matmul(c)?,
        Frozen::Lhs => c.matmul(&detached)?,
    };
    a.apply_op1(FrozenMatmul {
        product,
        constant: c.clone(),
        frozen,
    })
}

struct FrozenMatmul {
    /// The forward result, computed by candle's matmul.
    product: Tensor,
    constant: Tensor,
    frozen: Frozen,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "matmul-frozen-operand"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let product = self.product.contiguous()?;
        let (storage, layout) = product.storage_and_layout();
        match (&*storage, layout.contiguous_offsets()) {
            (candle_core::Storage::Cpu(cpu), Some((0, len))) if len == cpu_len(cpu) => {
                Ok((cpu.clone(), layout.shape().clone()))
            }
            _ => Err(candle_core::Error::Msg(
                "matmul-frozen-operand: unexpected product layout".into(),
            )),
        }
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let c = &self.constant;
        Ok(Some(match self.frozen {
            Frozen::Rhs => grad.matmul(&c.t()?)?,
            Frozen::Lhs => c.t()?.matmul(grad)?,
        }))
    }
}

fn cpu_len(storage: &CpuStorage) -> usize {
    match storage {
        CpuStorage::F32(v) => v.len(),
        _ => usize::MAX,
    }
}

/// `linear.forward(input)` for a data input (the query embeddings): no
/// gradient is computed for the input.
pub(crate) fn linear_on_input(linear: &Linear, input: &Tensor) -> candle_core::Result<Tensor> {
    let out = matmul_frozen(&linear.weight().t()?, input, Frozen::Lhs)?;
    match linear.bias() {
        Some(bias) => out.broadcast_add(bias),
        None => Ok(out),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The largest absolute difference between two tensors of one shape.
    pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn frozen_matmul_has_the_plain_value_and_parameter_gradient() {
        let dev = Device::Cpu;
        let w = Var::randn(0f32, 1.0, (3, 4, 5), &dev).unwrap();
        let data = Tensor::randn(0f32, 1.0, (3, 5, 6), &dev).unwrap();
        let lhs_data = Tensor::randn(0f32, 1.0, (3, 2, 4), &dev).unwrap();
        for frozen in [Frozen::Rhs, Frozen::Lhs] {
            let (plain, fast) = match frozen {
                Frozen::Rhs => (
                    w.as_tensor().matmul(&data).unwrap(),
                    matmul_frozen(w.as_tensor(), &data, frozen).unwrap(),
                ),
                Frozen::Lhs => (
                    lhs_data.matmul(w.as_tensor()).unwrap(),
                    matmul_frozen(w.as_tensor(), &lhs_data, frozen).unwrap(),
                ),
            };
            assert!(max_abs_diff(&plain, &fast) < 1e-6);
            let g_plain = plain.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let g_fast = fast.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let (a, b) = (
                g_plain.get(w.as_tensor()).unwrap(),
                g_fast.get(w.as_tensor()).unwrap(),
            );
            assert!(max_abs_diff(a, b) < 1e-4);
        }
    }
}
