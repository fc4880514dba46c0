//! What rebuilds a trained model: its method and configuration, kept with
//! its weights (a model bundle's `model.json` holds one). [`ModelSpec::build`]
//! makes the model over any `VarBuilder`: fresh variables to train, or
//! saved weights read by tensor name.

use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::classifier::Classifier;
use crate::error::ModelError;
use crate::error::Result;
use crate::heads::{HeadConfig, LinearProbe, UniformMean};
use crate::knn::KnnVote;
use crate::mam::{MamConfig, MemoryAttention};
use crate::vote::VoteFusion;

/// A trainable model's method and configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "config", rename_all = "snake_case")]
pub enum ModelSpec {
    /// The memory attention module.
    Mam(MamConfig),
    /// A linear classifier on the query embedding.
    LinearProbe(HeadConfig),
    /// The mean of the retrieved values beside the query, classified linearly.
    UniformMean(HeadConfig),
    /// The retrieved entries vote with their memory labels: nothing is
    /// trained, so there are no weights (see [`ModelSpec::has_weights`]).
    KnnVote(KnnVoteConfig),
}

/// The kNN vote over a memory's labels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnnVoteConfig {
    pub input_dim: usize,
    /// The classes it was chosen for (the memory's labels may name more).
    pub classes: usize,
    /// Voting neighbours and the temperature, chosen on validation.
    pub vote: KnnVote,
}

impl ModelSpec {
    /// The method's name (`mam`, `linear_probe`, `uniform_mean`).
    pub fn method(&self) -> &'static str {
        match self {
            ModelSpec::Mam(_) => "mam",
            ModelSpec::LinearProbe(_) => "linear_probe",
            ModelSpec::UniformMean(_) => "uniform_mean",
            ModelSpec::KnnVote(_) => "knn_vote",
        }
    }

    /// Query (key) dimension.
    pub fn input_dim(&self) -> usize {
        match self {
            ModelSpec::Mam(c) => c.input_dim,
            ModelSpec::LinearProbe(c) | ModelSpec::UniformMean(c) => c.input_dim,
            ModelSpec::KnnVote(c) => c.input_dim,
        }
    }

    /// Value dimension (0 for a model that reads no neighbours).
    pub fn value_dim(&self) -> usize {
        match self {
            ModelSpec::Mam(c) => c.value_dim,
            ModelSpec::LinearProbe(_) | ModelSpec::KnnVote(_) => 0,
            ModelSpec::UniformMean(c) => c.value_dim,
        }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        match self {
            ModelSpec::Mam(c) => c.classes,
            ModelSpec::LinearProbe(c) | ModelSpec::UniformMean(c) => c.classes,
            ModelSpec::KnnVote(c) => c.classes,
        }
    }

    /// Whether the model has trained weights ([`ModelSpec::build`] makes
    /// it); the kNN vote has none and votes with the memory's labels.
    pub fn has_weights(&self) -> bool {
        !matches!(self, ModelSpec::KnnVote(_))
    }

    /// The vote setting of a model that votes with the retrieved entries'
    /// memory labels (rather than reading them as label values).
    pub fn votes(&self) -> Option<KnnVote> {
        match self {
            ModelSpec::KnnVote(c) => Some(c.vote),
            _ => None,
        }
    }

    /// The vote fusion a module mixes into its predictions, where it has one
    /// that weighs anything.
    pub fn vote_fusion(&self) -> Option<VoteFusion> {
        match self {
            ModelSpec::Mam(c) => c.vote.fusion(),
            _ => None,
        }
    }

    /// Whether the model reads retrieved neighbours.
    pub fn retrieves(&self) -> bool {
        !matches!(self, ModelSpec::LinearProbe(_))
    }

    /// The model over the variables of `vb`.
    pub fn build(&self, vb: VarBuilder) -> Result<Box<dyn Classifier>> {
        Ok(match self {
            ModelSpec::Mam(config) => Box::new(MemoryAttention::new(config.clone(), vb)?),
            ModelSpec::LinearProbe(c) => Box::new(LinearProbe::new(c.input_dim, c.classes, vb)?),
            ModelSpec::UniformMean(c) => {
                Box::new(UniformMean::new(c.input_dim, c.value_dim, c.classes, vb)?)
            }
            ModelSpec::KnnVote(_) => {
                return Err(ModelError::Config(
                    "the kNN vote has no weights to build a model from; it votes with the \
                     memory's labels"
                        .into(),
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_read_back_and_name_their_method() {
        let specs = [
            ModelSpec::Mam(MamConfig::new(8, 8, 3)),
            ModelSpec::LinearProbe(HeadConfig {
                input_dim: 8,
                value_dim: 0,
                classes: 3,
            }),
            ModelSpec::UniformMean(HeadConfig {
                input_dim: 8,
                value_dim: 4,
                classes: 3,
            }),
        ];
        for spec in specs {
            let json = serde_json::to_value(&spec).unwrap();
            assert_eq!(json["method"], spec.method());
            let back: ModelSpec = serde_json::from_value(json).unwrap();
            assert_eq!(back, spec);
            let (_, vb) = crate::new_vars(&candle_core::Device::Cpu);
            let model = spec.build(vb).unwrap();
            assert_eq!(model.name(), spec.method());
            assert_eq!(model.uses_neighbours(), spec.retrieves());
        }
    }
}
