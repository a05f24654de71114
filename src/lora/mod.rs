//! Low-rank adapters: which linear layers get them ([`targets`], PEFT's matching rules) and the
//! trainable-vs-frozen report ([`report`], PEFT's exact line). The adapter layer and merge come
//! with the training loop.

pub mod report;
pub mod targets;
