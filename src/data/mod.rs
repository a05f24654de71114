//! Datasets → token ids and loss masks. So far: chat templates ([`template`]).

pub mod batch;
pub mod template;
