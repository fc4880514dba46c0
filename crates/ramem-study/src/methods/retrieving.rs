//! The retrieval methods: uniform averaging of the retrieved values
//! (RAC-like) and the memory attention module, over every memory, value
//! kind and k of the grid. Training and validation queries never retrieve
//! their own memory entry; test queries retrieve plain top-k. Neighbour
//! lists are searched once per memory (longest k), cached, and cut to each k.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context as _, Result};
use ramem_eval::Run;
use ramem_index::{Engine, Neighbours};
use ramem_model::heads::HeadConfig;
use ramem_model::{
    build_bank, new_vars, vote, LabelSpace, MemoryLabels, ModelSpec, NeighbourBank, Prediction,
    SampleSet, TrainData, ValueChoice, VoteFusion, VoteSetting,
};
use serde_json::{json, Value};

use super::{fit, Outcome, Seed};
use crate::config::{Method, StudyConfig};
use crate::ensemble::Trained;
use crate::evidence::write_evidence;
use crate::memories::{pollute_retrieved, DrawStreams, StudyMemory};
use crate::splits::SeedSplit;

/// The draw stream of the test images' retrieved pollution (each
/// training-split image has its own, named by its row).
const TEST_STREAM: u64 = u64::MAX;

/// A memory's test neighbours: the same for every seed, searched once.
pub(crate) struct TestNeighbours {
    /// As the methods see them (after retrieved pollution, where the study
    /// has it).
    pub lists: Neighbours,
    /// With an approximate engine: the engine's lists before pollution and
    /// exact search's, for recall@k.
    pub against_exact: Option<(Neighbours, Neighbours)>,
}

impl TestNeighbours {
    /// Recall@k of the engine's test lists against exact search, where the
    /// engine is approximate.
    fn recall_at(&self, k: usize) -> Option<f64> {
        self.against_exact
            .as_ref()
            .map(|(found, exact)| found.truncated(k).recall_against(&exact.truncated(k)))
    }
}

/// Test neighbours per memory, shared by the seeds that run side by side:
/// the first to need a memory's test neighbours computes them while the
/// others wait.
#[derive(Default)]
pub(crate) struct TestNeighbourCache {
    by_memory: Mutex<HashMap<String, Arc<TestNeighbours>>>,
}

impl TestNeighbourCache {
    fn get(&self, mem: &StudyMemory, test: &SampleSet, k: usize) -> Result<Arc<TestNeighbours>> {
        // By variant and place: seeds with memories of their own
        // (`grow_from_training`) share a variant's name, not its rows.
        let key = format!("{} at {}", mem.variant.name, mem.memory.location());
        let mut cache = self.by_memory.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = cache.get(&key) {
            return Ok(found.clone());
        }
        let started = Instant::now();
        let found = mem.search.search(&test.queries, test.dim, k, None)?;
        let exact = mem.search.exact(&test.queries, test.dim, k, None)?;
        let lists = pollute_retrieved(
            mem,
            found.clone(),
            &test.queries,
            test.dim,
            DrawStreams::Shared(TEST_STREAM),
        )?;
        let neighbours = Arc::new(TestNeighbours {
            lists,
            against_exact: exact.map(|exact| (found, exact)),
        });
        tracing::info!(
            "memory {}: test neighbours ready in {:.1} s",
            mem.variant.name,
            started.elapsed().as_secs_f64()
        );
        cache.insert(key, neighbours.clone());
        Ok(neighbours)
    }
}

/// A seed's training and validation queries' neighbours in one memory
/// (`k_max` long, searched once per memory and cached), never a query's own
/// entry, after retrieved pollution where the study has it.
pub(crate) struct SeedNeighbours {
    pub train: Neighbours,
    pub val: Neighbours,
}

/// Searches `mem` for the seed's training and validation queries.
pub(crate) fn seed_neighbours(
    seed: &Seed,
    mem: &StudyMemory,
    k_max: usize,
) -> Result<SeedNeighbours> {
    // Retrieved pollution draws for each training-split image from a
    // stream of its own, and for the test images from one shared stream.
    let search = |set: &SampleSet, rows: &[usize]| -> Result<Neighbours> {
        let exclude = rows.iter().map(|&i| mem.self_ids[i]).collect();
        let found = mem
            .search
            .search(&set.queries, set.dim, k_max, Some(exclude))?;
        pollute_retrieved(
            mem,
            found,
            &set.queries,
            set.dim,
            DrawStreams::PerQuery(rows),
        )
    };
    Ok(SeedNeighbours {
        train: search(&seed.train, &seed.split.train)?,
        val: search(&seed.val, &seed.split.val)?,
    })
}

/// The seed's training, validation and test sets with their neighbours
/// (the test set's where `test` gives them, else none), over one bank of
/// the `values` of every entry they retrieved; label values show `labels`
/// ([`seed_labels`]).
pub(crate) fn with_bank(
    seed: &Seed,
    mem: &StudyMemory,
    found: &SeedNeighbours,
    test: Option<&Neighbours>,
    values: ValueChoice,
    labels: Option<&MemoryLabels>,
) -> Result<(SampleSet, SampleSet, SampleSet, NeighbourBank)> {
    let k_max = found.train.k;
    let mut lists = [
        found.train.ids.clone(),
        found.val.ids.clone(),
        test.map(|t| t.ids.clone()).unwrap_or_default(),
    ];
    let [a, b, c] = &mut lists;
    let bank = build_bank(mem.memory.as_ref(), &mut [a, b, c], values, labels)?;
    let [train_rows, val_rows, test_rows] = lists;
    let test_k = if test.is_some() { k_max } else { 0 };
    Ok((
        with_neighbours(&seed.train, train_rows, k_max),
        with_neighbours(&seed.val, val_rows, k_max),
        with_neighbours(&seed.test, test_rows, test_k),
        bank,
    ))
}

/// The model a retrieval method trains: the module with the `[mam]`
/// options, or uniform averaging.
pub(crate) fn retrieval_model(
    config: &StudyConfig,
    method: Method,
    input_dim: usize,
    value_dim: usize,
    classes: usize,
) -> ModelSpec {
    match method {
        Method::Mam => ModelSpec::Mam(config.mam.with_dims(input_dim, value_dim, classes)),
        _ => ModelSpec::UniformMean(HeadConfig {
            input_dim,
            value_dim,
            classes,
        }),
    }
}

/// `base` with neighbour lists `neighbours` of length `k`.
fn with_neighbours(base: &SampleSet, neighbours: Vec<i64>, k: usize) -> SampleSet {
    SampleSet {
        neighbours,
        k,
        ..base.clone()
    }
}

/// Every retrieval method the study runs, over its memories, value kinds
/// and k, as report runs.
pub(super) fn retrieval_methods(
    seed: &Seed,
    memories: &[StudyMemory],
    test_cache: &TestNeighbourCache,
) -> Result<Vec<Run>> {
    let config = seed.config();
    let methods: Vec<Method> = [Method::UniformMean, Method::Mam]
        .into_iter()
        .filter(|&m| config.runs(m))
        .collect();
    let mut runs = Vec::new();
    if methods.is_empty() {
        return Ok(runs);
    }
    let device = ramem_model::default_device();
    let classes = seed.study.classes;
    let k_max = config.max_k();
    for mem in memories {
        let found = seed_neighbours(seed, mem, k_max)?;
        // The labels that label values show and the module's vote counts,
        // read once per memory where either needs them.
        let votes = methods.contains(&Method::Mam) && !config.mam.vote.is_off();
        let label_values = config.values.iter().any(|v| v.uses_labels());
        let labels = match label_values || votes {
            true => visible_labels(mem, seed.split, seed.study.class_names)?,
            false => None,
        };
        if labels.is_none() && (label_values || votes) {
            // An `auto` vote (the default) over entries nobody labelled: none.
            if label_values || config.mam.vote != VoteSetting::Auto {
                return Err(no_labels(mem)).context(match votes {
                    true => "[mam] vote counts the labels of the retrieved entries",
                    false => "label values show the labels of the retrieved entries",
                });
            }
            tracing::info!(
                "[mam] vote = \"auto\": the module does not vote: {}",
                no_labels(mem)
            );
        }
        let vote_labels = labels.as_ref().filter(|_| votes);
        let test_neighbours = test_cache.get(mem, &seed.test, k_max)?;
        let test_nb = &test_neighbours.lists;
        let (engine, ef) = mem.search.engine();
        for &values in &config.values {
            let (train_full, val_full, test_full, bank) =
                with_bank(seed, mem, &found, Some(test_nb), values, labels.as_ref())?;
            for k in config.k.runs() {
                // The sets at a candidate's k (`k = "auto"`) or the grid's.
                let at_k = |k: usize| {
                    (
                        train_full.with_k(k),
                        val_full.with_k(k),
                        test_full.with_k(k),
                    )
                };
                let k_name = k.map_or_else(|| "auto".to_string(), |k| k.to_string());
                let variant = format!(
                    "memory={},values={},k={k_name}",
                    mem.variant.name,
                    values.name()
                );
                let mut params: Vec<(String, Value)> = vec![
                    ("memory".to_string(), json!(mem.variant.name)),
                    ("memory_size".to_string(), json!(mem.memory.count())),
                    ("pollution".to_string(), json!(mem.variant.pollution)),
                    ("values".to_string(), json!(values.name())),
                ];
                if engine != Engine::Exact {
                    params.push(("engine".to_string(), json!(engine.name())));
                    params.push(("ef".to_string(), json!(ef)));
                }
                // Entries after the training split's: irrelevant ones, or
                // an external memory's (`extra`).
                let other = match mem.variant.is_extra() {
                    true => "extra",
                    false => "irrelevant",
                };
                for &method in &methods {
                    let label = format!("{method} {variant} seed {}", seed.seed);
                    let (
                        Trained {
                            predictions,
                            val_top1,
                            train_seconds,
                            eval_seconds,
                        },
                        chosen,
                        auto,
                    ) = seed.train_searched(
                        method,
                        &label,
                        (1, &val_full.labels),
                        |settings, label| {
                            let (tr, va, te) = at_k(settings.k.or(k).unwrap_or(k_max));
                            let data = TrainData {
                                train: &tr,
                                val: Some(&va),
                                bank: Some(&bank),
                                classes,
                            };
                            let (vars, vb) = new_vars(&device);
                            let spec =
                                retrieval_model(config, method, tr.dim, bank.value_dim, classes);
                            let model = settings.apply_to(&spec).build(vb)?;
                            let (model, bank) = (model.as_ref(), Some(&bank));
                            fit(
                                model,
                                &vars,
                                &data,
                                &settings.train,
                                label,
                                bank,
                                &te,
                                &[&va],
                            )
                        },
                    )?;
                    let k = chosen.k.or(k).unwrap_or(k_max);
                    let te = test_full.with_k(k);
                    let [pred, val_pred]: [Prediction; 2] = predictions
                        .try_into()
                        .map_err(|_| anyhow::anyhow!("{method}: expected two predictions"))?;
                    let mut run_params = params.clone();
                    run_params.push(("k".to_string(), json!(k)));
                    if let Some(recall) = test_neighbours.recall_at(k) {
                        run_params.push(("recall_at_k".to_string(), json!(recall)));
                    }
                    if let Some(first) = mem.irrelevant_from {
                        run_params.push((
                            format!("{other}_neighbours"),
                            json!(irrelevant_share(&test_nb.ids, k_max, k, first)),
                        ));
                    }
                    run_params.extend(auto);
                    let (pred, val_pred, vote_shares) = match (method, vote_labels) {
                        (Method::Mam, Some(labels)) => {
                            let lists = VoteLists {
                                val: &found.val.truncated(k),
                                test: &test_nb.truncated(k),
                                labels,
                            };
                            let (pred, val_pred, fused) = fuse_vote(
                                config.mam.vote,
                                &lists,
                                pred,
                                val_pred,
                                &val_full.labels,
                            );
                            let (fusion, shares) = fused.unzip();
                            run_params.extend(vote_params(fusion));
                            (pred, val_pred, shares)
                        }
                        _ => (pred, val_pred, None),
                    };
                    if let (Some(first), Some(attention)) = (mem.irrelevant_from, &pred.attention) {
                        let irrelevant: Vec<bool> =
                            bank.memory_ids.iter().map(|&id| id >= first).collect();
                        run_params.push((
                            format!("{other}_attention"),
                            json!(irrelevant_attention(
                                attention,
                                pred.attention_items,
                                &te.neighbours,
                                te.k,
                                &irrelevant
                            )),
                        ));
                    }
                    run_params.push(("val_top1".to_string(), json!(val_top1)));
                    let attention = (pred.attention.clone(), pred.attention_items);
                    let (run, log_probs) = seed.record(Outcome {
                        method,
                        variant: variant.clone(),
                        test: pred,
                        val: val_pred,
                        params: run_params,
                        train_seconds: Some(train_seconds),
                        eval_seconds,
                    })?;
                    if method == Method::Mam && config.evidence > 0 {
                        let scored = Prediction {
                            log_probs,
                            classes,
                            attention: attention.0,
                            attention_items: attention.1,
                        };
                        write_evidence(
                            &seed.evidence(),
                            mem.memory.as_ref(),
                            &bank,
                            &te,
                            test_nb,
                            &scored,
                            vote_shares.as_deref(),
                            &format!("{method}-{variant}-seed{}", seed.seed),
                        )?;
                    }
                    runs.push(run);
                }
            }
        }
    }
    Ok(runs)
}

/// The neighbours a module's vote counts, and their labels.
struct VoteLists<'a> {
    val: &'a Neighbours,
    test: &'a Neighbours,
    labels: &'a MemoryLabels,
}

/// The module's test and validation predictions with its vote mixed in
/// (`setting`: `auto` chooses the fusion on the validation predictions),
/// and the fusion used with each test neighbour's share through the vote.
fn fuse_vote(
    setting: VoteSetting,
    lists: &VoteLists,
    test: Prediction,
    val: Prediction,
    val_labels: &[usize],
) -> (Prediction, Prediction, Option<(VoteFusion, Vec<f32>)>) {
    let label_of = |id: i64| lists.labels.label_of(id);
    let Some(fusion) = setting.resolve(&val, lists.val, &label_of, val_labels) else {
        return (test, val, None);
    };
    let (test, shares) = vote::fuse_with_shares(&test, lists.test, &label_of, fusion);
    (
        test,
        vote::fuse(&val, lists.val, &label_of, fusion),
        Some((fusion, shares)),
    )
}

/// The report parameters of a vote fusion.
fn vote_params(fusion: Option<VoteFusion>) -> Vec<(String, Value)> {
    let Some(f) = fusion else {
        return Vec::new();
    };
    vec![
        ("vote_weight".to_string(), json!(f.weight)),
        ("vote_k".to_string(), json!(f.k)),
        ("vote_temperature".to_string(), json!(f.temperature)),
    ]
}

/// The share of the first `k` of each `k_max`-long neighbour list that are
/// irrelevant entries (memory rows from `first_irrelevant` on): how much of
/// a polluted memory retrieval actually brings to the model.
fn irrelevant_share(ids: &[i64], k_max: usize, k: usize, first_irrelevant: i64) -> f64 {
    let (mut found, mut irrelevant) = (0usize, 0usize);
    for list in ids.chunks_exact(k_max) {
        for &id in list.iter().take(k).filter(|&&id| id >= 0) {
            found += 1;
            irrelevant += usize::from(id >= first_irrelevant);
        }
    }
    if found == 0 {
        0.0
    } else {
        irrelevant as f64 / found as f64
    }
}

/// The mean, over queries, of the share of the attention on the retrieved
/// neighbours that goes to irrelevant ones: `attention` (n x items, the
/// neighbours last), `neighbours` (n x k bank rows, -1 for an empty slot),
/// `irrelevant` per bank row.
fn irrelevant_attention(
    attention: &[f32],
    items: usize,
    neighbours: &[i64],
    k: usize,
    irrelevant: &[bool],
) -> f64 {
    if items < k || k == 0 {
        return 0.0;
    }
    let mut total = 0.0;
    let mut queries = 0usize;
    for (weights, ids) in attention
        .chunks_exact(items)
        .zip(neighbours.chunks_exact(k))
    {
        let weights = &weights[items - k..];
        let (mut on_all, mut on_irrelevant) = (0.0f64, 0.0f64);
        for (&w, &id) in weights.iter().zip(ids) {
            let Some(&is_irrelevant) = usize::try_from(id).ok().and_then(|i| irrelevant.get(i))
            else {
                continue;
            };
            on_all += w as f64;
            if is_irrelevant {
                on_irrelevant += w as f64;
            }
        }
        if on_all > 0.0 {
            total += on_irrelevant / on_all;
            queries += 1;
        }
    }
    if queries == 0 {
        0.0
    } else {
        total / queries as f64
    }
}

/// The labels of `mem`'s rows a method of this seed may see
/// ([`visible_labels`]), where `needed`; an error where it has none.
pub(crate) fn seed_labels(
    seed: &Seed,
    mem: &StudyMemory,
    needed: bool,
) -> Result<Option<MemoryLabels>> {
    if !needed {
        return Ok(None);
    }
    match visible_labels(mem, seed.split, seed.study.class_names)? {
        Some(labels) => Ok(Some(labels)),
        None => Err(no_labels(mem)),
    }
}

/// Why `mem` shows no labels.
fn no_labels(mem: &StudyMemory) -> anyhow::Error {
    anyhow::anyhow!(
        "memory {} ({}): label values need the memory's labels, or to know which training \
         image each entry is; it carries no labels and holds none of the training images",
        mem.variant.name,
        mem.memory.location()
    )
}

/// The labels a label-valued bank may show for `mem`'s rows in this seed.
/// A memory that carries labels shows its own (by class name; entries of
/// classes the study does not have show none). Otherwise: those of the
/// seed's training images, with the labels the methods train on (noisy
/// where the study adds noise); validation images, entries from outside
/// the training split and every other row stay unlabelled, so no method
/// sees a label that the baselines do not. `None` where the memory carries
/// no labels and holds none of the training images.
fn visible_labels(
    mem: &StudyMemory,
    split: &SeedSplit,
    class_names: &[String],
) -> Result<Option<MemoryLabels>> {
    if let Some(space) = LabelSpace::of_memory(mem.memory.as_ref(), class_names)? {
        return Ok(Some(space.values()));
    }
    if mem.self_ids.iter().all(|&id| id < 0) {
        return Ok(None);
    }
    Ok(Some(MemoryLabels {
        classes: class_names.len(),
        of_row: labels_of_memory_rows(&mem.self_ids, mem.memory.count() as usize, split),
    }))
}

/// Per memory row, the training label of the training image it holds
/// (`self_ids`: the memory row of each training-split image, or -1), or
/// `None` where the row is not one of `split`'s training images.
fn labels_of_memory_rows(
    self_ids: &[i64],
    memory_rows: usize,
    split: &SeedSplit,
) -> Vec<Option<usize>> {
    let mut of_row = vec![None; memory_rows];
    for (&row, &label) in split.train.iter().zip(&split.train_labels) {
        if let Some(slot) = usize::try_from(self_ids[row])
            .ok()
            .and_then(|id| of_row.get_mut(id))
        {
            *slot = Some(label);
        }
    }
    of_row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irrelevant_attention_is_the_share_of_the_neighbours_weight() {
        // Two queries, the query item first, k = 2; bank row 1 is irrelevant.
        let attention = [0.5, 0.25, 0.25, 0.2, 0.6, 0.2];
        let neighbours = [0, 1, 1, -1];
        let irrelevant = [false, true];
        let share = irrelevant_attention(&attention, 3, &neighbours, 2, &irrelevant);
        // Query 1: 0.25 of 0.5; query 2: all of its one present neighbour's weight.
        assert!((share - (0.5 + 1.0) / 2.0).abs() < 1e-9, "{share}");
    }

    #[test]
    fn irrelevant_share_counts_the_first_k_present_neighbours() {
        // Two queries, k_max = 3; rows from 10 on are irrelevant; -1 is an empty slot.
        let ids = [10, 2, 11, 3, -1, 12];
        assert_eq!(irrelevant_share(&ids, 3, 3, 10), 3.0 / 5.0);
        assert_eq!(irrelevant_share(&ids, 3, 2, 10), 1.0 / 3.0);
        assert_eq!(irrelevant_share(&[-1, -1], 2, 2, 10), 0.0);
    }

    #[test]
    fn label_values_show_the_seed_training_labels_only() {
        // Training split rows 0..5; memory rows hold rows 4, 0, 2, 1 (row 3 is
        // not in the memory) and two irrelevant entries. Row 1 is this seed's
        // validation image; row 2's training label is a noisy one.
        let self_ids = [1, 3, 2, -1, 0];
        let split = SeedSplit {
            train: vec![0, 2, 3, 4],
            train_labels: vec![7, 5, 6, 8],
            val: vec![1],
            val_labels: vec![9],
            flipped: 1,
        };
        let of_row = labels_of_memory_rows(&self_ids, 6, &split);
        assert_eq!(of_row, vec![Some(8), Some(7), Some(5), None, None, None]);
    }
}
