//! Low-rank adapters: the adapter of one linear layer ([`adapter`]), which layers get one
//! ([`targets`], PEFT's matching rules) and the trainable-vs-frozen report ([`report`], PEFT's
//! exact line).

pub mod adapter;
pub mod peft_config;
pub mod report;
pub mod targets;
