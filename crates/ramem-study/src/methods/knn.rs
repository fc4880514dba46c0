//! The kNN vote: the k nearest labelled training images vote, weighted by
//! `exp((s - 1) / T)`; k and T chosen on the validation split.

use std::time::Instant;

use anyhow::Result;
use ramem_model::knn;
use serde_json::json;

use super::{Outcome, Seed};
use crate::config::Method;

pub(super) fn knn_vote(seed: &Seed) -> Result<Outcome> {
    let classes = seed.study.classes;
    let started = Instant::now();
    let (vote, val_top1) = knn::select_on_validation(&seed.train, &seed.val, classes)?;
    let test = knn::knn_vote(&seed.train, &seed.test, classes, vote, false)?;
    let val = knn::knn_vote(&seed.train, &seed.val, classes, vote, false)?;
    Ok(Outcome {
        method: Method::KnnVote,
        variant: "-".into(),
        test,
        val,
        params: vec![
            ("k".into(), json!(vote.k)),
            ("temperature".into(), json!(vote.temperature)),
            ("val_top1".into(), json!(val_top1)),
        ],
        train_seconds: None,
        eval_seconds: started.elapsed().as_secs_f64(),
    })
}
