//! Low-rank adapters: the adapter of one linear layer ([`adapter`]) and the initialisations
//! that slice it out of the base weight ([`init`]: PiSSA, OLoRA), which layers get one
//! ([`targets`], PEFT's matching rules) and the trainable-vs-frozen report ([`report`], PEFT's
//! exact line). The PEFT file format is the `peft` module, one above this.

pub mod adapter;
pub mod init;
pub mod report;
pub mod targets;
