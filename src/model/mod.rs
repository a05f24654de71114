//! Architectures built from config: the Llama-family decoder ([`llama`]), its config and RoPE.

pub mod config;
pub mod llama;
pub mod rope;
