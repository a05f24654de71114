//! What a run hands back: the PEFT adapter folder ([`peft`]). GGUF LoRA and merged models
//! come with the rest of issue #6.

pub mod gguf_lora;
pub mod merge;
pub mod peft;
pub mod servability;
