//! A model's trainable variables: created through a [`VarBuilder`] over a
//! [`VarMap`] (the way candle models take their weights, so that the same
//! constructor loads a saved model by tensor name from a safetensors
//! file instead), listed in name order, and initialised from a seed.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::rng::SplitMix64;

/// A fresh, empty set of variables and the builder that fills it: pass the
/// builder to a model's constructor, and the set to [`crate::train()`].
pub fn new_vars(device: &Device) -> (VarMap, VarBuilder<'static>) {
    let vars = VarMap::new();
    let builder = VarBuilder::from_varmap(&vars, DType::F32, device);
    (vars, builder)
}

/// The variables sorted by name (the order checkpoints and the optimiser use).
pub fn all_vars(vars: &VarMap) -> Vec<(String, Var)> {
    let data = vars.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Sets the variable behind `tensor` (one of `vars`) to `value`.
pub fn set_var(vars: &VarMap, tensor: &Tensor, value: &Tensor) -> candle_core::Result<()> {
    for (_, var) in all_vars(vars) {
        if var.as_tensor().id() == tensor.id() {
            return var.set(value);
        }
    }
    Err(candle_core::Error::Msg(
        "set_var: the tensor is not one of the model's variables".into(),
    ))
}

/// Sets the variable behind `tensor` (one of `vars`) to zeros.
pub fn zero_var(vars: &VarMap, tensor: &Tensor) -> candle_core::Result<()> {
    set_var(vars, tensor, &tensor.zeros_like()?)
}

/// Re-initialises every variable from `seed`: matrices uniform in
/// ±1/sqrt(fan_in) (fan_in = the last dimension), vectors named `*weight`
/// (layer-norm gains) to 1 and other vectors (biases) to 0. Makes a run's
/// starting point a function of its seed alone.
pub fn seeded_init(vars: &VarMap, seed: u64) -> candle_core::Result<()> {
    let mut rng = SplitMix64::new(seed);
    for (name, var) in all_vars(vars) {
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
