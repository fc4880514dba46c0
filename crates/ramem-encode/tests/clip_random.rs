//! Tests `ClipModel` on a small, randomly initialised CLIP written by the
//! test itself in the Hugging Face layout (config.json, model.safetensors
//! with every tensor `CLIPModel` has, tokenizer.json).
//!
//! This is a test double: real CLIP weights cannot be installed on these
//! machines (no registry ships them), so the loader is exercised on random
//! weights of the same layout. Its outputs are checked against a plain,
//! loop-based float64 forward pass written below from the Hugging Face CLIP
//! architecture, plus shape, norm, determinism and error checks.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use ramem_encode::clip::{ClipModel, CLIP_MEAN, CLIP_STD};
use serde_json::json;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::normalizers::Lowercase;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::Tokenizer;

const TEXT_HIDDEN: usize = 32;
const TEXT_INTER: usize = 64;
const VISION_HIDDEN: usize = 48;
const VISION_INTER: usize = 96;
const LAYERS: usize = 2;
const HEADS: usize = 2;
const MAX_POS: usize = 12;
const IMAGE: usize = 32;
const PATCH: usize = 8;
const PROJ: usize = 16;

/// Start and end tokens sit at ids 0 and 1, so the end token is *not* the
/// largest id: pooling by largest id instead of by `eos_token_id` would fail
/// the reference check.
const WORDS: [&str; 18] = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<unk>",
    "a",
    "photo",
    "of",
    "cat",
    "dog",
    "red",
    "car",
    "on",
    "the",
    "mat",
    "tree",
    "big",
    "small",
    ".",
    ",",
];
const EOS: u32 = 1;

/// Deterministic normal samples (splitmix64 + Box-Muller).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
    fn vec(&mut self, n: usize, mean: f32, std: f32) -> Vec<f32> {
        (0..n).map(|_| mean + std * self.normal()).collect()
    }
}

type Weights = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn add(w: &mut Weights, rng: &mut Rng, name: &str, shape: &[usize], mean: f32, std: f32) {
    let n = shape.iter().product();
    w.insert(name.to_string(), (shape.to_vec(), rng.vec(n, mean, std)));
}

fn add_linear(w: &mut Weights, rng: &mut Rng, name: &str, out: usize, inp: usize, bias: bool) {
    let std = 1.0 / (inp as f32).sqrt();
    add(w, rng, &format!("{name}.weight"), &[out, inp], 0.0, std);
    if bias {
        add(w, rng, &format!("{name}.bias"), &[out], 0.0, 0.1);
    }
}

fn add_ln(w: &mut Weights, rng: &mut Rng, name: &str, n: usize) {
    add(w, rng, &format!("{name}.weight"), &[n], 1.0, 0.1);
    add(w, rng, &format!("{name}.bias"), &[n], 0.0, 0.1);
}

fn add_encoder(w: &mut Weights, rng: &mut Rng, prefix: &str, hidden: usize, inter: usize) {
    for l in 0..LAYERS {
        let p = format!("{prefix}.encoder.layers.{l}");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            add_linear(
                w,
                rng,
                &format!("{p}.self_attn.{proj}"),
                hidden,
                hidden,
                true,
            );
        }
        add_ln(w, rng, &format!("{p}.layer_norm1"), hidden);
        add_linear(w, rng, &format!("{p}.mlp.fc1"), inter, hidden, true);
        add_linear(w, rng, &format!("{p}.mlp.fc2"), hidden, inter, true);
        add_ln(w, rng, &format!("{p}.layer_norm2"), hidden);
    }
}

/// Every tensor of a Hugging Face `CLIPModel` with the dimensions above.
fn random_weights(seed: u64) -> Weights {
    let mut rng = Rng(seed);
    let mut w = Weights::new();
    let r = &mut rng;
    add(
        &mut w,
        r,
        "text_model.embeddings.token_embedding.weight",
        &[WORDS.len(), TEXT_HIDDEN],
        0.0,
        1.0,
    );
    add(
        &mut w,
        r,
        "text_model.embeddings.position_embedding.weight",
        &[MAX_POS, TEXT_HIDDEN],
        0.0,
        0.5,
    );
    add_encoder(&mut w, r, "text_model", TEXT_HIDDEN, TEXT_INTER);
    add_ln(&mut w, r, "text_model.final_layer_norm", TEXT_HIDDEN);
    let patches = (IMAGE / PATCH) * (IMAGE / PATCH);
    add(
        &mut w,
        r,
        "vision_model.embeddings.class_embedding",
        &[VISION_HIDDEN],
        0.0,
        1.0,
    );
    add(
        &mut w,
        r,
        "vision_model.embeddings.patch_embedding.weight",
        &[VISION_HIDDEN, 3, PATCH, PATCH],
        0.0,
        1.0 / ((3 * PATCH * PATCH) as f32).sqrt(),
    );
    add(
        &mut w,
        r,
        "vision_model.embeddings.position_embedding.weight",
        &[patches + 1, VISION_HIDDEN],
        0.0,
        0.5,
    );
    add_ln(&mut w, r, "vision_model.pre_layrnorm", VISION_HIDDEN);
    add_encoder(&mut w, r, "vision_model", VISION_HIDDEN, VISION_INTER);
    add_ln(&mut w, r, "vision_model.post_layernorm", VISION_HIDDEN);
    add_linear(&mut w, r, "visual_projection", PROJ, VISION_HIDDEN, false);
    add_linear(&mut w, r, "text_projection", PROJ, TEXT_HIDDEN, false);
    w.insert("logit_scale".into(), (vec![], vec![2.6592]));
    w
}

fn config(eos_token_id: u32) -> serde_json::Value {
    json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": PROJ,
        "logit_scale_init_value": 2.6592,
        "text_config": {
            "vocab_size": WORDS.len(),
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": TEXT_INTER,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "max_position_embeddings": MAX_POS,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "bos_token_id": 0,
            "eos_token_id": eos_token_id,
            "pad_token_id": 1
        },
        "vision_config": {
            "hidden_size": VISION_HIDDEN,
            "intermediate_size": VISION_INTER,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "num_channels": 3,
            "image_size": IMAGE,
            "patch_size": PATCH,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5
        }
    })
}

/// A word-level tokenizer that wraps each caption in start/end tokens, as
/// CLIP's BPE tokenizer does.
fn tokenizer(words: &[&str]) -> Tokenizer {
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), json!(i)))
        .collect();
    // WordLevel's deserializer borrows strings, so go through text.
    let model_json = json!({"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"});
    let model: WordLevel = serde_json::from_str(&model_json.to_string()).unwrap();
    let id = |w: &str| words.iter().position(|x| *x == w).unwrap() as u32;
    let post = TemplateProcessing::builder()
        .try_single("<|startoftext|> $A <|endoftext|>")
        .unwrap()
        .special_tokens(vec![
            ("<|startoftext|>", id("<|startoftext|>")),
            ("<|endoftext|>", id("<|endoftext|>")),
        ])
        .build()
        .unwrap();
    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(Lowercase));
    tok.with_pre_tokenizer(Some(Whitespace {}));
    tok.with_post_processor(Some(post));
    tok
}

/// The test tokenizer, truncating to the text tower's positions (the end
/// token is kept).
fn truncating_tokenizer() -> Tokenizer {
    let mut tok = tokenizer(&WORDS);
    tok.with_truncation(Some(tokenizers::TruncationParams {
        max_length: MAX_POS,
        ..Default::default()
    }))
    .unwrap();
    tok
}

fn write_model(dir: &Path, weights: &Weights, config: &serde_json::Value, words: &[&str]) {
    let tensors: HashMap<String, Tensor> = weights
        .iter()
        .map(|(name, (shape, data))| {
            let t = Tensor::from_vec(data.clone(), shape.as_slice(), &Device::Cpu).unwrap();
            (name.clone(), t)
        })
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(config).unwrap(),
    )
    .unwrap();
    tokenizer(words)
        .save(dir.join("tokenizer.json"), true)
        .unwrap();
}

fn random_clip(seed: u64) -> (tempfile::TempDir, Weights) {
    let tmp = tempfile::tempdir().unwrap();
    let w = random_weights(seed);
    write_model(tmp.path(), &w, &config(EOS), &WORDS);
    (tmp, w)
}

fn random_images(seed: u64, n: usize) -> Tensor {
    let mut rng = Rng(seed);
    Tensor::from_vec(
        rng.vec(n * 3 * IMAGE * IMAGE, 0.0, 1.0),
        (n, 3, IMAGE, IMAGE),
        &Device::Cpu,
    )
    .unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

fn assert_unit_rows(t: &Tensor) {
    for (i, r) in rows(t).iter().enumerate() {
        let n = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-5, "row {i} has norm {n}");
    }
}

// ------------------------------------------------- loop-based reference

type Mat = Vec<Vec<f64>>;

struct Reference<'a>(&'a Weights);

impl Reference<'_> {
    fn get(&self, name: &str) -> &[f32] {
        &self.0.get(name).unwrap_or_else(|| panic!("no {name}")).1
    }

    fn linear(&self, x: &Mat, name: &str, bias: bool) -> Mat {
        let (shape, w) = &self.0[&format!("{name}.weight")];
        let (out, inp) = (shape[0], shape[1]);
        let b = bias.then(|| self.get(&format!("{name}.bias")));
        x.iter()
            .map(|row| {
                (0..out)
                    .map(|o| {
                        let dot: f64 = (0..inp).map(|i| row[i] * w[o * inp + i] as f64).sum();
                        dot + b.map_or(0.0, |b| b[o] as f64)
                    })
                    .collect()
            })
            .collect()
    }

    fn layer_norm(&self, x: &Mat, name: &str) -> Mat {
        let w = self.get(&format!("{name}.weight"));
        let b = self.get(&format!("{name}.bias"));
        x.iter()
            .map(|row| {
                let n = row.len() as f64;
                let mean = row.iter().sum::<f64>() / n;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                row.iter()
                    .enumerate()
                    .map(|(i, v)| (v - mean) / (var + 1e-5).sqrt() * w[i] as f64 + b[i] as f64)
                    .collect()
            })
            .collect()
    }

    fn attention(&self, x: &Mat, p: &str, causal: bool) -> Mat {
        let q = self.linear(x, &format!("{p}.q_proj"), true);
        let k = self.linear(x, &format!("{p}.k_proj"), true);
        let v = self.linear(x, &format!("{p}.v_proj"), true);
        let (l, e) = (x.len(), x[0].len());
        let hd = e / HEADS;
        let mut ctx = vec![vec![0.0; e]; l];
        for h in 0..HEADS {
            let cols = h * hd..(h + 1) * hd;
            for i in 0..l {
                let visible = if causal { i + 1 } else { l };
                let scores: Vec<f64> = (0..visible)
                    .map(|j| {
                        cols.clone().map(|c| q[i][c] * k[j][c]).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = exps.iter().sum();
                for c in cols.clone() {
                    ctx[i][c] = (0..visible).map(|j| exps[j] / z * v[j][c]).sum();
                }
            }
        }
        self.linear(&ctx, &format!("{p}.out_proj"), true)
    }

    fn encoder(&self, mut x: Mat, prefix: &str, causal: bool) -> Mat {
        let plus = |a: &Mat, b: &Mat| -> Mat {
            a.iter()
                .zip(b)
                .map(|(r, s)| r.iter().zip(s).map(|(u, v)| u + v).collect())
                .collect()
        };
        for l in 0..LAYERS {
            let p = format!("{prefix}.encoder.layers.{l}");
            let a = self.attention(
                &self.layer_norm(&x, &format!("{p}.layer_norm1")),
                &format!("{p}.self_attn"),
                causal,
            );
            x = plus(&x, &a);
            let h = self.linear(
                &self.layer_norm(&x, &format!("{p}.layer_norm2")),
                &format!("{p}.mlp.fc1"),
                true,
            );
            let h: Mat = h
                .iter()
                .map(|r| r.iter().map(|v| v / (1.0 + (-1.702 * v).exp())).collect())
                .collect();
            x = plus(&x, &self.linear(&h, &format!("{p}.mlp.fc2"), true));
        }
        x
    }

    fn normalize(v: &[f64]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter().map(|x| (x / n) as f32).collect()
    }

    /// Text embedding of already tokenized ids, pooled at the first end token.
    fn text(&self, ids: &[u32]) -> Vec<f32> {
        let tok = self.get("text_model.embeddings.token_embedding.weight");
        let pos = self.get("text_model.embeddings.position_embedding.weight");
        let x: Mat = ids
            .iter()
            .enumerate()
            .map(|(p, &id)| {
                (0..TEXT_HIDDEN)
                    .map(|c| {
                        tok[id as usize * TEXT_HIDDEN + c] as f64 + pos[p * TEXT_HIDDEN + c] as f64
                    })
                    .collect()
            })
            .collect();
        let h = self.encoder(x, "text_model", true);
        let eos = ids.iter().position(|&t| t == EOS).unwrap();
        let pooled = self.layer_norm(&vec![h[eos].clone()], "text_model.final_layer_norm");
        Self::normalize(&self.linear(&pooled, "text_projection", false)[0])
    }

    /// Image embedding of one (3, IMAGE, IMAGE) image.
    fn image(&self, px: &[f32]) -> Vec<f32> {
        let g = IMAGE / PATCH;
        let conv = self.get("vision_model.embeddings.patch_embedding.weight");
        let cls = self.get("vision_model.embeddings.class_embedding");
        let pos = self.get("vision_model.embeddings.position_embedding.weight");
        let mut x: Mat = vec![cls.iter().map(|&v| v as f64).collect()];
        for gy in 0..g {
            for gx in 0..g {
                let tokv: Vec<f64> = (0..VISION_HIDDEN)
                    .map(|o| {
                        let mut s = 0.0;
                        for c in 0..3 {
                            for dy in 0..PATCH {
                                for dx in 0..PATCH {
                                    let w = conv[((o * 3 + c) * PATCH + dy) * PATCH + dx] as f64;
                                    let p = px
                                        [(c * IMAGE + gy * PATCH + dy) * IMAGE + gx * PATCH + dx]
                                        as f64;
                                    s += w * p;
                                }
                            }
                        }
                        s
                    })
                    .collect();
                x.push(tokv);
            }
        }
        for (p, row) in x.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v += pos[p * VISION_HIDDEN + c] as f64;
            }
        }
        let x = self.layer_norm(&x, "vision_model.pre_layrnorm");
        let h = self.encoder(x, "vision_model", false);
        let pooled = self.layer_norm(&vec![h[0].clone()], "vision_model.post_layernorm");
        Self::normalize(&self.linear(&pooled, "visual_projection", false)[0])
    }
}

// ------------------------------------------------------------------ tests

const CAPTIONS: [&str; 5] = [
    "a photo of a cat",
    "the big red car",
    "",
    "a dog , a tree . a cat on the mat",
    "zebra on the mat",
];

#[test]
fn embeddings_match_reference_and_share_a_space() {
    let (dir, w) = random_clip(7);
    let model = ClipModel::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(model.dim(), PROJ);
    assert_eq!(model.image_size(), IMAGE);
    assert_eq!(model.max_text_len(), MAX_POS);
    assert_eq!(model.pixel_mean_std(), (CLIP_MEAN, CLIP_STD));
    assert!((model.logit_scale() - 2.6592f32.exp()).abs() < 1e-3);

    let images = random_images(11, 3);
    let img = model.embed_images(&images).unwrap();
    assert_eq!(img.dims(), &[3, PROJ]);
    assert_unit_rows(&img);

    let txt = model.embed_texts(&CAPTIONS).unwrap();
    assert_eq!(txt.dims(), &[CAPTIONS.len(), PROJ]);
    assert_unit_rows(&txt);
    // Same space: a text-image similarity matrix can be formed.
    let sims = txt.matmul(&img.t().unwrap()).unwrap();
    assert_eq!(sims.dims(), &[CAPTIONS.len(), 3]);

    let reference = Reference(&w);
    let px = images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let want_img: Vec<Vec<f32>> = px
        .chunks(3 * IMAGE * IMAGE)
        .map(|p| reference.image(p))
        .collect();
    let d = max_abs_diff(&rows(&img), &want_img);
    eprintln!("image: max |model - reference| = {d:.2e}");
    assert!(
        d < 1e-4,
        "image embeddings differ from the reference by {d}"
    );

    let tok = truncating_tokenizer();
    let want_txt: Vec<Vec<f32>> = CAPTIONS
        .iter()
        .map(|c| reference.text(tok.encode(*c, true).unwrap().get_ids()))
        .collect();
    let d = max_abs_diff(&rows(&txt), &want_txt);
    eprintln!("text: max |model - reference| = {d:.2e}");
    assert!(d < 1e-4, "text embeddings differ from the reference by {d}");
}

#[test]
fn model_can_be_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ClipModel>();
}

#[test]
fn deterministic_and_discriminative() {
    let (dir, _) = random_clip(7);
    let a = ClipModel::load(dir.path(), &Device::Cpu).unwrap();
    let b = ClipModel::load(dir.path(), &Device::Cpu).unwrap();
    let images = random_images(5, 4);
    let ea = rows(&a.embed_images(&images).unwrap());
    assert_eq!(ea, rows(&a.embed_images(&images).unwrap()));
    assert_eq!(ea, rows(&b.embed_images(&images).unwrap()));
    for i in 0..ea.len() {
        for j in 0..i {
            let d = max_abs_diff(&ea[i..=i], &ea[j..=j]);
            assert!(d > 1e-3, "images {i} and {j} embed alike");
        }
    }
    // Batching and order do not change a caption's embedding.
    let together = rows(&a.embed_texts(&CAPTIONS).unwrap());
    for (i, c) in CAPTIONS.iter().enumerate() {
        let alone = rows(&a.embed_texts(&[c]).unwrap());
        assert!(max_abs_diff(&together[i..=i], &alone) < 1e-5, "caption {i}");
    }
    assert!(max_abs_diff(&together[0..1], &together[1..2]) > 1e-3);
    // A single image alone matches its row in a batch.
    let one = rows(&a.embed_images(&images.narrow(0, 2, 1).unwrap()).unwrap());
    assert!(max_abs_diff(&one, &ea[2..3]) < 1e-5);
}

#[test]
fn long_captions_truncate_and_keep_the_end_token() {
    let (dir, w) = random_clip(3);
    let model = ClipModel::load(dir.path(), &Device::Cpu).unwrap();
    let long = "a big red car on the mat ".repeat(5); // 35 words > 12 positions
    let got = rows(&model.embed_texts(&[long.as_str()]).unwrap());
    let tok = truncating_tokenizer();
    let ids = tok.encode(long.as_str(), true).unwrap().get_ids().to_vec();
    assert_eq!(ids.len(), MAX_POS);
    assert_eq!(*ids.last().unwrap(), EOS);
    let want = Reference(&w).text(&ids);
    assert!(max_abs_diff(&got, &[want]) < 1e-4);
    assert_eq!(model.embed_texts(&[]).unwrap().dims(), &[0, PROJ]);
    assert_eq!(
        model
            .embed_images(
                &Tensor::zeros((0, 3, IMAGE, IMAGE), candle_core::DType::F32, &Device::Cpu)
                    .unwrap()
            )
            .unwrap()
            .dims(),
        &[0, PROJ]
    );
}

/// Configs from before `eos_token_id` was set say 2; Hugging Face then
/// pools at the largest token id. With the end token last in the
/// vocabulary both conventions pick the same token.
#[test]
fn legacy_eos_convention_pools_at_largest_id() {
    let mut words: Vec<&str> = WORDS
        .iter()
        .copied()
        .filter(|w| *w != "<|endoftext|>")
        .collect();
    words.push("<|endoftext|>");
    let eos = (words.len() - 1) as u32;
    let w = random_weights(9);
    let new = tempfile::tempdir().unwrap();
    write_model(new.path(), &w, &config(eos), &words);
    let old = tempfile::tempdir().unwrap();
    write_model(old.path(), &w, &config(2), &words);
    let a = ClipModel::load(new.path(), &Device::Cpu).unwrap();
    let b = ClipModel::load(old.path(), &Device::Cpu).unwrap();
    let ta = rows(&a.embed_texts(&CAPTIONS).unwrap());
    let tb = rows(&b.embed_texts(&CAPTIONS).unwrap());
    assert!(max_abs_diff(&ta, &tb) < 1e-6);
}

#[test]
fn preprocessor_config_sets_mean_and_std() {
    let (dir, _) = random_clip(1);
    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        r#"{"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "crop_size": {"height": 32, "width": 32}}"#,
    )
    .unwrap();
    let m = ClipModel::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(m.pixel_mean_std(), ([0.5; 3], [0.25; 3]));

    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        r#"{"image_mean": [0.5, 0.5]}"#,
    )
    .unwrap();
    let e = format!(
        "{:#}",
        ClipModel::load(dir.path(), &Device::Cpu).unwrap_err()
    );
    assert!(
        e.contains("image_mean") && e.contains("preprocessor_config.json"),
        "{e}"
    );
}

fn load_err(dir: &Path) -> String {
    let msg = format!(
        "{:#}",
        ClipModel::load(dir, &Device::Cpu).expect_err("load should fail")
    );
    eprintln!("expected error: {msg}");
    msg
}

#[test]
fn bad_inputs_give_clear_errors() {
    let (dir, _) = random_clip(2);
    let p = dir.path();
    let model = ClipModel::load(p, &Device::Cpu).unwrap();

    // Images of the wrong size or rank.
    let wrong = Tensor::zeros((2, 3, 16, 16), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = format!("{:#}", model.embed_images(&wrong).unwrap_err());
    assert!(e.contains("(N, 3, 32, 32)"), "{e}");
    let flat = Tensor::zeros((3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(model.embed_images(&flat).is_err());

    // A truncated weights file.
    let weights = std::fs::read(p.join("model.safetensors")).unwrap();
    std::fs::write(p.join("model.safetensors"), &weights[..weights.len() / 2]).unwrap();
    let e = load_err(p);
    assert!(e.contains("model.safetensors"), "{e}");

    // No weights at all.
    std::fs::remove_file(p.join("model.safetensors")).unwrap();
    let e = load_err(p);
    assert!(
        e.contains("model.safetensors") && e.contains("missing"),
        "{e}"
    );
    std::fs::write(p.join("model.safetensors"), &weights).unwrap();
    ClipModel::load(p, &Device::Cpu).unwrap();

    // A config without vision_config.
    let mut cfg = config(EOS);
    cfg.as_object_mut().unwrap().remove("vision_config");
    std::fs::write(p.join("config.json"), cfg.to_string()).unwrap();
    let e = load_err(p);
    assert!(
        e.contains("vision_config") && e.contains("config.json"),
        "{e}"
    );

    // A config that disagrees with the weights.
    let mut cfg = config(EOS);
    cfg["vision_config"]["intermediate_size"] = json!(100);
    std::fs::write(p.join("config.json"), cfg.to_string()).unwrap();
    let e = load_err(p);
    assert!(e.contains("do not match"), "{e}");

    // A weight missing from the file.
    std::fs::write(p.join("config.json"), config(EOS).to_string()).unwrap();
    let mut w = random_weights(2);
    w.remove("vision_model.embeddings.class_embedding");
    write_model(p, &w, &config(EOS), &WORDS);
    let e = load_err(p);
    assert!(e.contains("class_embedding"), "{e}");

    // An unsupported activation.
    let mut cfg = config(EOS);
    cfg["text_config"]["hidden_act"] = json!("swish");
    std::fs::write(p.join("config.json"), cfg.to_string()).unwrap();
    let e = load_err(p);
    assert!(e.contains("swish"), "{e}");

    // A tokenizer without an end-of-text post-processor.
    write_model(p, &random_weights(2), &config(EOS), &WORDS);
    let mut tok = tokenizer(&WORDS);
    tok.with_post_processor(None::<TemplateProcessing>);
    tok.save(p.join("tokenizer.json"), false).unwrap();
    let m = ClipModel::load(p, &Device::Cpu).unwrap();
    let e = format!("{:#}", m.embed_texts(&["a cat"]).unwrap_err());
    assert!(e.contains("end-of-text"), "{e}");
}
