//! Model bundles: what is saved is what predicts, weights are checked, and
//! a memory that cannot serve the model is refused naming both.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;
use ramem_index::Engine;
use ramem_model::heads::HeadConfig;
use ramem_model::{new_vars, MamConfig, ModelSpec, TrainConfig, ValueChoice};
use ramem_recognize::{
    save_bundle, BundleMeta, MemoryRecord, ModelBundle, Recognizer, TrainingRecord, ValueEncoders,
    WeightsRecord,
};
use ramem_store::memory::{
    FloatDtype, Memory, MemorySpec, MemoryWriter, MetadataEntry, ShardBatch, ValueSpec,
};

const DIM: usize = 6;

fn rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..n * dim)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.3
        })
        .collect()
}

/// A memory of `n` entries with image values, keys from `encoder`.
fn memory(dir: &Path, n: usize, encoder: &str, dim: usize) -> Memory {
    let mut spec = MemorySpec::new(encoder, dim, FloatDtype::F16, true);
    spec.image = Some(ValueSpec {
        encoder: encoder.into(),
        dim,
        dtype: FloatDtype::F32,
    });
    let mut writer = MemoryWriter::create(dir, spec).unwrap();
    let keys = rows(n, dim, 1);
    writer
        .append_shard(ShardBatch {
            keys: &keys,
            image_values: Some(&keys),
            text_values: None,
            metadata: &vec![MetadataEntry::source("x.png"); n],
        })
        .unwrap();
    drop(writer);
    Memory::open(dir).unwrap()
}

fn meta(model: ModelSpec, memory: Option<&Memory>) -> BundleMeta {
    BundleMeta {
        format: String::new(),
        version: 0,
        model,
        classes: vec!["a".into(), "b".into(), "c".into()],
        class_counts: vec![50, 20, 5],
        image_encoder: "enc".into(),
        values: ValueChoice::Image,
        value_encoders: memory.map(|m| ValueEncoders::of(m)).unwrap_or_default(),
        k: 4,
        memory: memory.map(|m| MemoryRecord::of(m).unwrap()),
        posthoc_tau: 0.5,
        validation: BTreeMap::from([("top1".to_string(), 50.0)]),
        training: TrainingRecord {
            data: "folders:/x".into(),
            seed: 3,
            options: TrainConfig::default(),
            train_images: 75,
            val_images: 10,
            best_epoch: Some(2),
            seconds: 1.0,
        },
        weights: WeightsRecord {
            bytes: 0,
            checksum: String::new(),
        },
        created_by: "test".into(),
    }
}

#[test]
fn a_saved_bundle_predicts_as_the_model_it_was_saved_from() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = memory(&tmp.path().join("mem"), 30, "enc", DIM);
    let mut config = MamConfig::new(DIM, DIM, 3);
    config.hidden = 8;
    config.heads = 2;
    for spec in [
        ModelSpec::Mam(config),
        ModelSpec::UniformMean(HeadConfig {
            input_dim: DIM,
            value_dim: DIM,
            classes: 3,
        }),
        ModelSpec::LinearProbe(HeadConfig {
            input_dim: DIM,
            value_dim: 0,
            classes: 3,
        }),
    ] {
        let dir = tmp.path().join(spec.method());
        let (vars, vb) = new_vars(&Device::Cpu);
        let model = spec.build(vb).unwrap();
        model.initialise(&vars, 7).unwrap();
        let bundle = save_bundle(&dir, meta(spec.clone(), Some(&mem)), &vars, &[]).unwrap();
        assert_eq!(ModelBundle::open(&dir).unwrap().meta, bundle.meta);
        let (recognizer, warning) =
            Recognizer::open(&dir, None, Some(Engine::Exact), None).unwrap();
        assert!(warning.is_none(), "{warning:?}");
        let queries = rows(5, DIM, 9);
        let decisions = recognizer.predict_embeddings(&queries, DIM).unwrap();
        let p = &decisions.prediction;
        assert_eq!((p.classes, p.log_probs.len()), (3, 15));
        // The post-hoc adjustment is applied: rows are no longer normalised.
        let total: f32 = p.log_probs[..3].iter().map(|v| v.exp()).sum();
        assert!((total - 1.0).abs() > 1e-3, "{total}");
        match spec.retrieves() {
            true => {
                let n = decisions.neighbours.unwrap();
                assert_eq!((n.k, n.ids.len()), (4, 20));
            }
            false => assert!(decisions.neighbours.is_none()),
        }
        // The memory grew: still usable, with a warning.
        if spec.method() == "mam" {
            let mut writer = MemoryWriter::open_append(tmp.path().join("mem")).unwrap();
            let more = rows(2, DIM, 11);
            writer
                .append_shard(ShardBatch {
                    keys: &more,
                    image_values: Some(&more),
                    text_values: None,
                    metadata: &[MetadataEntry::default(), MetadataEntry::default()],
                })
                .unwrap();
            drop(writer);
            let (_, warning) = Recognizer::open(&dir, None, Some(Engine::Exact), None).unwrap();
            let warning = warning.unwrap();
            assert!(warning.contains("30 entries then, 32 now"), "{warning}");
        }
    }
}

#[test]
fn damaged_bundles_and_unfit_memories_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = memory(&tmp.path().join("mem"), 10, "enc", DIM);
    let spec = ModelSpec::UniformMean(HeadConfig {
        input_dim: DIM,
        value_dim: DIM,
        classes: 3,
    });
    let dir = tmp.path().join("model");
    let (vars, vb) = new_vars(&Device::Cpu);
    spec.build(vb).unwrap();
    save_bundle(&dir, meta(spec, Some(&mem)), &vars, &[]).unwrap();
    let open = || {
        Recognizer::open(&dir, None, Some(Engine::Exact), None)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default()
    };
    // Truncated weights.
    let weights = dir.join("weights.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 10]).unwrap();
    let err = open();
    assert!(
        err.contains("weights.safetensors") && err.contains("truncated"),
        "{err}"
    );
    // Same length, other bytes.
    let mut other = bytes.clone();
    let last = other.len() - 1;
    other[last] ^= 0x55;
    std::fs::write(&weights, &other).unwrap();
    assert!(open().contains("checksum"), "{}", open());
    std::fs::write(&weights, &bytes).unwrap();
    assert!(open().is_empty());
    // Another version.
    let model_json = dir.join("model.json");
    let text = std::fs::read_to_string(&model_json).unwrap();
    std::fs::write(
        &model_json,
        text.replace("\"version\": 1", "\"version\": 7"),
    )
    .unwrap();
    let err = open();
    assert!(
        err.contains("model.json") && err.contains("version 7"),
        "{err}"
    );
    std::fs::write(&model_json, &text).unwrap();
    // A memory of another encoder, and of another dimension.
    let other_encoder = memory(&tmp.path().join("other"), 10, "clip:x", DIM);
    let err = Recognizer::open(&dir, Some(other_encoder.dir()), Some(Engine::Exact), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("clip:x") && err.contains("\"enc\""), "{err}");
    let wide = memory(&tmp.path().join("wide"), 10, "enc", DIM + 2);
    let err = Recognizer::open(&dir, Some(wide.dir()), Some(Engine::Exact), None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("8 dimensions") && err.contains("takes 6"),
        "{err}"
    );
    // Not a bundle at all.
    let err = format!("{:#}", ModelBundle::open(tmp.path()).unwrap_err());
    assert!(
        err.contains("model.json") && err.contains("ramem train"),
        "{err}"
    );
}
