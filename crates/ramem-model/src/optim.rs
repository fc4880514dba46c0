//! AdamW with decoupled weight decay, whose moment estimates can be saved and
//! restored (so a resumed run continues exactly where it stopped), and a
//! seeded initialisation of a module's variables.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::VarMap;

use crate::mam::all_vars;
use crate::rng::SplitMix64;

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
        let second = first.clone();
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
        self.step += 1;
        let t = self.step as i32;
        let correction1 = 1.0 - self.beta1.powi(t);
        let correction2 = 1.0 - self.beta2.powi(t);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let lr = self.learning_rate * self.rate_scales[i];
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Gradients can carry the graph they were computed through; the
            // moments must not, or every step would keep all earlier ones alive.
            let grad = &grad.detach();
            let m = ((&self.first[i] * self.beta1)? + (grad * (1.0 - self.beta1))?)?;
            let v = ((&self.second[i] * self.beta2)? + (grad.sqr()? * (1.0 - self.beta2))?)?;
            let update = ((&m / correction1)? / ((&v / correction2)?.sqrt()? + self.eps)?)?;
            let decayed = if var.as_tensor().rank() >= 2 && self.weight_decay > 0.0 {
                (var.as_tensor() * (1.0 - lr * self.weight_decay))?
            } else {
                var.as_tensor().clone()
            };
            var.set(&(decayed - (update * lr)?)?)?;
            self.first[i] = m.detach();
            self.second[i] = v.detach();
        }
        Ok(())
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
                *slot = saved
                    .to_device(var.as_tensor().device())
                    .map_err(|e| e.to_string())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Re-initialises every variable from `seed`: matrices uniform in
/// ±1/sqrt(fan_in) (fan_in = the last dimension), vectors named `*weight`
/// (layer-norm gains) to 1 and other vectors (biases) to 0. Makes a run's
/// starting point a function of its seed alone.
pub fn seeded_init(varmap: &VarMap, seed: u64) -> candle_core::Result<()> {
    let mut rng = SplitMix64::new(seed);
    for (name, var) in all_vars(varmap) {
        let shape = var.as_tensor().dims().to_vec();
        let count: usize = shape.iter().product();
        let values: Vec<f32> = if shape.len() >= 2 {
            let bound = 1.0 / (*shape.last().unwrap_or(&1) as f64).sqrt();
            (0..count)
                .map(|_| {
                    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                    ((2.0 * u - 1.0) * bound) as f32
                })
                .collect()
        } else if name.ends_with("weight") {
            vec![1.0; count]
        } else {
            vec![0.0; count]
        };
        var.set(&Tensor::from_vec(values, shape, var.as_tensor().device())?)?;
    }
    Ok(())
}
