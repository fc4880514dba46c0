//! AdamW with decoupled weight decay, whose moment estimates can be saved and
//! restored (so a resumed run continues exactly where it stopped).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor, Var};
use candle_nn::VarMap;

use rayon::prelude::*;

use crate::vars::all_vars;

/// AdamW over every variable of a [`VarMap`]. Weight decay applies to
/// matrices only (not to biases or layer-norm gains).
pub struct AdamW {
    vars: Vec<(String, Var)>,
    /// Per variable: multiplies `learning_rate` (1 unless set by
    /// [`AdamW::scale_learning_rate`]).
    rate_scales: Vec<f64>,
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    step: usize,
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Update CPU tensors in place (off only to test it against the tensor-op path).
    in_place: bool,
}

impl AdamW {
    pub fn new(
        varmap: &VarMap,
        learning_rate: f64,
        weight_decay: f64,
    ) -> candle_core::Result<AdamW> {
        let vars = all_vars(varmap);
        let first = vars
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Separate storage: the CPU update writes each moment in place.
        let second = vars
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(AdamW {
            rate_scales: vec![1.0; vars.len()],
            vars,
            first,
            second,
            step: 0,
            learning_rate,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            in_place: true,
        })
    }

    /// Trains the variables whose names start with `prefix` at `scale`
    /// times the (scheduled) learning rate; returns how many matched.
    pub fn scale_learning_rate(&mut self, prefix: &str, scale: f64) -> usize {
        let mut matched = 0;
        for ((name, _), rate_scale) in self.vars.iter().zip(&mut self.rate_scales) {
            if name.starts_with(prefix) {
                *rate_scale = scale;
                matched += 1;
            }
        }
        matched
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// One update from the gradients of a loss.
    pub fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        self.step_with(|var| grads.get(var).map(|g| Gradient::Tensor(Ok(g.clone()))))
    }

    /// One update from a hand-written step's gradients
    /// ([`crate::native::StepGradients`]), each paired with its parameter,
    /// read where they are (the step keeps the buffers for its next call).
    /// A variable without a gradient is left as it is, as in [`AdamW::step`].
    pub fn step_native(&mut self, gradients: &[(Tensor, Vec<f32>)]) -> candle_core::Result<()> {
        let by_id: HashMap<_, _> = gradients
            .iter()
            .map(|(param, grad)| (param.id(), (param, grad.as_slice())))
            .collect();
        self.step_with(|var| {
            by_id.get(&var.id()).map(|&(param, grad)| {
                if param.device().is_cpu() {
                    Gradient::Slice(grad)
                } else {
                    Gradient::Tensor(Tensor::from_slice(grad, param.shape(), param.device()))
                }
            })
        })
    }

    /// One update, the gradient of each variable from `grad_of`.
    fn step_with<'g>(
        &mut self,
        grad_of: impl Fn(&Tensor) -> Option<Gradient<'g>>,
    ) -> candle_core::Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let correction1 = 1.0 - self.beta1.powi(t);
        let correction2 = 1.0 - self.beta2.powi(t);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(grad) = grad_of(var.as_tensor()) else {
                continue;
            };
            let lr = self.learning_rate * self.rate_scales[i];
            let update = self.fused_update(lr, correction1, correction2, var);
            let grad = match grad {
                Gradient::Slice(grad) => {
                    if self.in_place && var.as_tensor().is_contiguous() {
                        self.update_in_place(i, var, grad, &update)?;
                        continue;
                    }
                    Tensor::from_slice(grad, var.as_tensor().shape(), var.device())?
                }
                // Gradients can carry the graph they were computed through;
                // the moments must not, or every step would keep all earlier
                // ones alive.
                Gradient::Tensor(grad) => grad?.detach(),
            };
            if self.in_place
                && var.device().is_cpu()
                && grad.is_contiguous()
                && var.as_tensor().is_contiguous()
            {
                let held = crate::native::Reader::new(&[&grad])?;
                self.update_in_place(i, var, held.get(0), &update)?;
                continue;
            }
            let grad = &grad;
            let decay = update.parameter.decay;
            let m = ((&self.first[i] * self.beta1)? + (grad * (1.0 - self.beta1))?)?;
            let v = ((&self.second[i] * self.beta2)? + (grad.sqr()? * (1.0 - self.beta2))?)?;
            let update = ((&m / correction1)? / ((&v / correction2)?.sqrt()? + self.eps)?)?;
            let decayed = match decay {
                Some(decay) => (var.as_tensor() * decay)?,
                None => var.as_tensor().clone(),
            };
            var.set(&(decayed - (update * lr)?)?)?;
            self.first[i] = m.detach();
            self.second[i] = v.detach();
        }
        Ok(())
    }

    /// One in-place pass over variable `i`'s weights, both its moments and
    /// its gradient, instead of a dozen tensor ops that each allocate their
    /// result; the same arithmetic, step for step, as the tensor-op path.
    fn update_in_place(
        &self,
        i: usize,
        var: &Var,
        grad: &[f32],
        update: &FusedUpdate,
    ) -> candle_core::Result<()> {
        self.first[i].inplace_op1(&HoldFirst {
            grad,
            second: &self.second[i],
            param: var.as_tensor(),
            update,
        })
    }

    /// The settings of one variable's update at this step.
    fn fused_update(&self, lr: f64, correction1: f64, correction2: f64, var: &Var) -> FusedUpdate {
        let decay = if var.as_tensor().rank() >= 2 && self.weight_decay > 0.0 {
            Some(1.0 - lr * self.weight_decay)
        } else {
            None
        };
        FusedUpdate {
            beta1: self.beta1,
            beta2: self.beta2,
            parameter: ParameterUpdate {
                inv_correction1: 1.0 / correction1,
                inv_correction2: 1.0 / correction2,
                eps: self.eps,
                lr,
                decay,
            },
        }
    }

    /// The moment estimates by name (`first.NAME`, `second.NAME`).
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("first.{name}"), self.first[i].clone());
            out.insert(format!("second.{name}"), self.second[i].clone());
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`] and the step count.
    pub fn load_state(
        &mut self,
        state: &HashMap<String, Tensor>,
        step: usize,
    ) -> Result<(), String> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (prefix, slot) in [
                ("first", &mut self.first[i]),
                ("second", &mut self.second[i]),
            ] {
                let key = format!("{prefix}.{name}");
                let saved = state
                    .get(&key)
                    .ok_or_else(|| format!("optimizer state has no tensor {key}"))?;
                if saved.dims() != var.as_tensor().dims() {
                    return Err(format!(
                        "optimizer tensor {key} has shape {:?}, the model {:?}",
                        saved.dims(),
                        var.as_tensor().dims()
                    ));
                }
                // A copy of its own: the CPU update writes moments in place.
                *slot = saved
                    .to_device(var.as_tensor().device())
                    .and_then(|t| t.copy())
                    .map_err(|e| e.to_string())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The element range of a contiguous layout.
fn contiguous_range(layout: &Layout) -> candle_core::Result<std::ops::Range<usize>> {
    layout
        .contiguous_offsets()
        .map(|(start, end)| start..end)
        .ok_or_else(|| candle_core::Error::Msg("AdamW: a non-contiguous tensor".into()))
}

/// The contiguous f32 slice a CPU tensor's layout describes, to write in
/// place.
fn cpu_f32_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a mut [f32]> {
    match storage {
        CpuStorage::F32(data) => Ok(&mut data[contiguous_range(layout)?]),
        _ => Err(candle_core::Error::Msg("AdamW: f32 tensors only".into())),
    }
}

/// The whole AdamW update of one variable: both moments
/// (`m = beta * m + (1 - beta) * g`, `g²` for the second), then the
/// parameter, element by element in one pass. Each product is written as
/// candle's `affine` computes `x * mul + add` in f32, so the tensor-op path
/// rounds alike.
struct FusedUpdate {
    beta1: f64,
    beta2: f64,
    parameter: ParameterUpdate,
}

impl FusedUpdate {
    fn run(&self, param: &mut [f32], first: &mut [f32], second: &mut [f32], grad: &[f32]) {
        let (b1, r1) = (self.beta1 as f32, (1.0 - self.beta1) as f32);
        let (b2, r2) = (self.beta2 as f32, (1.0 - self.beta2) as f32);
        let p = &self.parameter;
        let (c1, c2) = (p.inv_correction1 as f32, p.inv_correction2 as f32);
        let (eps, lr) = (p.eps as f32, p.lr as f32);
        let decay = p.decay.map(|d| d as f32);
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::is_x86_feature_detected!("avx2");
        param
            .par_chunks_mut(UPDATE_CHUNK)
            .zip(first.par_chunks_mut(UPDATE_CHUNK))
            .zip(second.par_chunks_mut(UPDATE_CHUNK))
            .zip(grad.par_chunks(UPDATE_CHUNK))
            .for_each(|(((param, first), second), grad)| {
                let chunk = Chunk {
                    param,
                    first,
                    second,
                    grad,
                };
                let constants = [b1, r1, b2, r2, c1, c2, eps, lr];
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: AVX2 is available (checked once above).
                    unsafe { chunk.update_avx2(constants, decay) };
                    return;
                }
                chunk.update(constants, decay);
            });
    }
}

/// One parallel task's share of an AdamW update.
struct Chunk<'a> {
    param: &'a mut [f32],
    first: &'a mut [f32],
    second: &'a mut [f32],
    grad: &'a [f32],
}

impl Chunk<'_> {
    /// `constants`: beta1, 1 - beta1, beta2, 1 - beta2, the two inverse
    /// bias corrections, eps and the learning rate.
    #[inline(always)]
    fn update(self, [b1, r1, b2, r2, c1, c2, eps, lr]: [f32; 8], decay: Option<f32>) {
        let Chunk {
            param,
            first,
            second,
            grad,
        } = self;
        for (((p, m), v), &g) in param.iter_mut().zip(first).zip(second).zip(grad) {
            *m = (*m * b1 + 0.0) + (g * r1 + 0.0);
            *v = (*v * b2 + 0.0) + (g * g * r2 + 0.0);
            let update = (*m * c1 + 0.0) / (((*v * c2 + 0.0).sqrt()) * 1.0 + eps);
            let decayed = match decay {
                Some(d) => *p * d + 0.0,
                None => *p,
            };
            *p = decayed - (update * lr + 0.0);
        }
    }

    /// [`Chunk::update`] compiled for AVX2: the same operations (Rust does
    /// not fuse a multiply and an add), so the same bits, 8 lanes at a
    /// time; the square roots and divisions are most of the arithmetic.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn update_avx2(self, constants: [f32; 8], decay: Option<f32>) {
        self.update(constants, decay)
    }
}

/// A variable's gradient: a tensor (autograd), or a hand-written step's
/// buffer, read in place on the CPU.
enum Gradient<'a> {
    Tensor(candle_core::Result<Tensor>),
    Slice(&'a [f32]),
}

/// candle lends one tensor's storage mutably per in-place op, so the fused
/// update nests three: [`HoldFirst`] holds the first moment (and reads the
/// gradient), [`HoldSecond`] the second, [`UpdateParameter`] the weights.
struct HoldFirst<'a> {
    grad: &'a [f32],
    second: &'a Tensor,
    param: &'a Tensor,
    update: &'a FusedUpdate,
}

impl InplaceOp1 for HoldFirst<'_> {
    fn name(&self) -> &'static str {
        "adamw-first-moment"
    }

    fn cpu_fwd(&self, first: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let first = cpu_f32_mut(first, layout)?;
        if first.len() != self.grad.len() {
            candle_core::bail!("AdamW: moment and gradient differ in size");
        }
        self.second.inplace_op1(&HoldSecond {
            first: std::sync::Mutex::new(Some(first)),
            grad: self.grad,
            param: self.param,
            update: self.update,
        })
    }
}

/// A moment's slice, handed from one nested op to the next.
type Lent<'a> = std::sync::Mutex<Option<&'a mut [f32]>>;

fn take<'a>(lent: &Lent<'a>) -> candle_core::Result<&'a mut [f32]> {
    lent.lock()
        .ok()
        .and_then(|mut slot| slot.take())
        .ok_or_else(|| candle_core::Error::Msg("AdamW: a moment lent twice".into()))
}

struct HoldSecond<'a, 'b> {
    first: Lent<'b>,
    grad: &'b [f32],
    param: &'a Tensor,
    update: &'a FusedUpdate,
}

impl InplaceOp1 for HoldSecond<'_, '_> {
    fn name(&self) -> &'static str {
        "adamw-second-moment"
    }

    fn cpu_fwd(&self, second: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let second = cpu_f32_mut(second, layout)?;
        self.param.inplace_op1(&UpdateParameter {
            first: std::sync::Mutex::new(Some(take(&self.first)?)),
            second: std::sync::Mutex::new(Some(second)),
            grad: self.grad,
            update: self.update,
        })
    }
}

struct UpdateParameter<'a, 'b> {
    first: Lent<'b>,
    second: Lent<'b>,
    grad: &'b [f32],
    update: &'a FusedUpdate,
}

impl InplaceOp1 for UpdateParameter<'_, '_> {
    fn name(&self) -> &'static str {
        "adamw-parameter"
    }

    fn cpu_fwd(&self, param: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let param = cpu_f32_mut(param, layout)?;
        let (first, second) = (take(&self.first)?, take(&self.second)?);
        if param.len() != first.len() || param.len() != second.len() {
            candle_core::bail!("AdamW: parameter and moments differ in size");
        }
        self.update.run(param, first, second, self.grad);
        Ok(())
    }
}

/// Elements per parallel task of the in-place updates: large enough that a
/// task outweighs its scheduling, small enough to spread a layer's weights
/// over every core.
const UPDATE_CHUNK: usize = 1 << 15;

/// The settings of `p = decay * p - lr * (m / c1) / (sqrt(v / c2) + eps)`.
struct ParameterUpdate {
    inv_correction1: f64,
    inv_correction2: f64,
    eps: f64,
    lr: f64,
    decay: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Two identical models, one updated in place and one through tensor
    /// ops, stay bit-identical: the in-place update rounds as the other does.
    #[test]
    fn the_in_place_update_is_the_tensor_op_update() {
        let device = Device::Cpu;
        let data = Tensor::from_vec(
            (0..12).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>(),
            (4, 3),
            &device,
        )
        .unwrap();
        let model = || {
            let varmap = VarMap::new();
            let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &device);
            vb.get_with_hints((4, 3), "w", candle_nn::Init::Const(0.5))
                .unwrap();
            vb.get_with_hints(3, "b", candle_nn::Init::Const(-0.25))
                .unwrap();
            varmap
        };
        let (fused_vars, plain_vars) = (model(), model());
        let mut fused = AdamW::new(&fused_vars, 1e-2, 0.1).unwrap();
        let mut plain = AdamW::new(&plain_vars, 1e-2, 0.1).unwrap();
        plain.in_place = false;
        let values = |varmap: &VarMap| -> Vec<u32> {
            all_vars(varmap)
                .iter()
                .flat_map(|(_, v)| {
                    v.as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                })
                .map(f32::to_bits)
                .collect()
        };
        for _ in 0..5 {
            for (varmap, optimizer) in [(&fused_vars, &mut fused), (&plain_vars, &mut plain)] {
                let vars = all_vars(varmap);
                let (w, b) = (vars[1].1.as_tensor(), vars[0].1.as_tensor());
                let loss = ((w * &data).unwrap().sqr().unwrap().sum_all().unwrap()
                    + b.exp().unwrap().sum_all().unwrap())
                .unwrap();
                optimizer.step(&loss.backward().unwrap()).unwrap();
            }
            assert_eq!(values(&fused_vars), values(&plain_vars));
        }
        assert_ne!(values(&fused_vars), values(&model()), "the weights moved");
        for (key, tensor) in fused.state() {
            let other = &plain.state()[&key];
            assert_eq!(
                tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                other.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{key}"
            );
        }
    }
}
