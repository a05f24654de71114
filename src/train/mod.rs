//! Training: what a model minimises ([`loss`], over the sums of [`cross_entropy`]), gradients
//! derived by hand ([`derived`]: causal LMs with or without gradient checkpointing,
//! classifiers) with autodiff as their oracle ([`autograd`]), AdamW and global-norm clipping
//! ([`optim`]), learning-rate schedules
//! ([`schedule`]), one optimiser step over accumulated micro-batches ([`step`]) with f16
//! products' dynamic loss scaling ([`loss_scale`]), the loop
//! ([`trainer`]) with its checkpoints ([`checkpoint`]), metrics log ([`metrics`], [`tensorboard`]), progress bar
//! ([`progress`]) and Ctrl-C handling ([`interrupt`]); evaluation ([`evaluate`]),
//! classification metrics ([`classes`]), early stopping and the best checkpoint
//! ([`early_stopping`]). Knows the PEFT format ([`crate::peft`]), not exports.

pub mod autograd;
pub mod checkpoint;
pub mod classes;
pub mod cross_entropy;
pub mod derived;
pub mod early_stopping;
pub mod evaluate;
pub mod interrupt;
pub mod loss;
pub mod loss_scale;
pub mod metrics;
pub mod optim;
pub mod preference;
pub mod progress;
pub mod schedule;
pub mod step;
pub mod tensorboard;
pub mod trainer;

use burn::tensor::Tensor;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(
        "the step's batches have no labelled tokens to learn from (every label is masked); check the data's loss masks"
    )]
    NoLossTokens,
    #[error("no gradient reached the adapter on `{0}`; this is a bug, please report it")]
    MissingGradient(String),
    #[error(
        "non-finite values: loss {loss}, gradient norm {grad_norm}; lower train.lr, keep train.max_grad_norm finite, or set train.skip_nonfinite = true to skip such steps"
    )]
    NonFinite { loss: f64, grad_norm: f64 },
    #[error(
        "the loss is {loss} with f16 products: a value in the forward exceeded f16's range (±65504), which no loss scale can fix; use model.compute_dtype = \"bf16\" (the same tensor-core speed, f32's range) or \"f32\", or set train.skip_nonfinite = true to skip such steps"
    )]
    HalfOverflow { loss: f64, grad_norm: f64 },
    #[error("reading a value back from the device: {0}")]
    Readback(String),
}

/// Reads a one-element tensor.
pub fn scalar(t: Tensor<1>) -> Result<f64, TrainError> {
    crate::transfer::scalar::<f32, 1>(t)
        .map(f64::from)
        .map_err(TrainError::Readback)
}
