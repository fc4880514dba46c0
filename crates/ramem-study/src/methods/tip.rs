//! Tip-Adapter and Tip-Adapter-F over the linear probe: the probe's
//! log-probabilities plus `alpha * exp(-beta (1 - q.F)) @ onehot(labels)`
//! over the training features, alpha and beta chosen on validation;
//! Tip-Adapter-F then trains the cache keys.

use std::time::Instant;

use anyhow::Result;
use ramem_model::tip_adapter::{self, TipAdapterF};
use ramem_model::{new_vars, predict, Prediction};
use serde_json::json;

use super::probe::ProbeLogits;
use super::{train_model, Outcome, Seed};
use crate::config::Method;
use crate::ensemble::Trained;

/// The Tip-Adapter runs the study asks for.
pub(super) fn tip_adapters(seed: &Seed, probe: &ProbeLogits) -> Result<Vec<Outcome>> {
    let config = seed.config();
    let (plain, fine_tuned) = (
        config.runs(Method::TipAdapter),
        config.runs(Method::TipAdapterF),
    );
    if !plain && !fine_tuned {
        return Ok(Vec::new());
    }
    let device = ramem_model::default_device();
    let classes = seed.study.classes;
    let (train, val, test) = (&seed.train, &seed.val, &seed.test);
    let started = Instant::now();
    let (params, val_top1) =
        tip_adapter::select_params(train, val, &probe.val.log_probs, classes, false, &device)?;
    let select_seconds = started.elapsed().as_secs_f64();
    let mut outcomes = Vec::new();
    if plain {
        let started = Instant::now();
        let test_pred =
            tip_adapter::tip_adapter(train, test, &probe.test.log_probs, classes, params, &device)?;
        let val_pred =
            tip_adapter::tip_adapter(train, val, &probe.val.log_probs, classes, params, &device)?;
        outcomes.push(Outcome {
            method: Method::TipAdapter,
            variant: "-".into(),
            test: test_pred,
            val: val_pred,
            // Its base classifier's settings, where they were `auto`.
            params: [
                ("alpha".into(), json!(params.alpha)),
                ("beta".into(), json!(params.beta)),
                ("val_top1".into(), json!(val_top1)),
            ]
            .into_iter()
            .chain(probe.auto.iter().cloned())
            .collect(),
            train_seconds: Some(probe.train_seconds + select_seconds),
            eval_seconds: started.elapsed().as_secs_f64(),
        });
    }
    if fine_tuned {
        // Train the keys with the cache switched on (the best non-zero
        // alpha on validation), then choose alpha and beta again.
        let (train_params, _) =
            tip_adapter::select_params(train, val, &probe.val.log_probs, classes, true, &device)?;
        let data = seed.plain_data();
        // Each member's (alpha, beta), chosen on validation; the report
        // gives the first member's.
        let mut chosen = Vec::new();
        let (
            Trained {
                predictions,
                val_top1,
                train_seconds,
                eval_seconds,
            },
            _,
            auto,
        ) = seed.train_searched(
            Method::TipAdapterF,
            "tip-adapter-f",
            (1, &val.labels),
            |settings, label| {
                let (vars, vb) = new_vars(&device);
                let mut model =
                    TipAdapterF::new(train, &probe.train.log_probs, classes, train_params, vb)?;
                model.set_eval_base(&probe.val.log_probs, val.len(), &device)?;
                let (seconds, _) = train_model(&model, &vars, &data, &settings.train, label)?;
                let (params, val_top1) = model.select_params(val, &device)?;
                model.params = params;
                chosen.push(params);
                let val_pred = predict(&model, val, None, &device, 1024)?;
                let started = Instant::now();
                model.set_eval_base(&probe.test.log_probs, test.len(), &device)?;
                let test_pred = predict(&model, test, None, &device, 1024)?;
                Ok(Trained {
                    predictions: vec![test_pred, val_pred],
                    val_top1: Some(val_top1),
                    train_seconds: seconds,
                    eval_seconds: started.elapsed().as_secs_f64(),
                })
            },
        )?;
        let [test_pred, val_pred]: [Prediction; 2] = predictions
            .try_into()
            .map_err(|_| anyhow::anyhow!("tip-adapter-f: expected two predictions"))?;
        // The first member of the last training (a search trains several).
        let params = chosen[chosen.len().saturating_sub(config.train.ensemble.max(1))];
        outcomes.push(Outcome {
            method: Method::TipAdapterF,
            variant: "-".into(),
            test: test_pred,
            val: val_pred,
            params: vec![
                ("alpha".into(), json!(params.alpha)),
                ("beta".into(), json!(params.beta)),
                ("train_alpha".into(), json!(train_params.alpha)),
                ("train_beta".into(), json!(train_params.beta)),
                ("val_top1".into(), json!(val_top1.unwrap_or_default())),
            ]
            .into_iter()
            .chain(auto)
            .collect(),
            train_seconds: Some(probe.train_seconds + select_seconds + train_seconds),
            eval_seconds,
        });
    }
    Ok(outcomes)
}
