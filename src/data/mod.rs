//! Datasets → token ids and loss masks: JSONL rows and their formats ([`rows`]), chat templates
//! ([`template`]), tokens and labels ([`encode`]), the train/eval sets and their shuffled
//! micro-batch stream ([`dataset`]), and the batch the loop consumes ([`batch`]).

pub mod batch;
pub mod dataset;
pub mod encode;
pub mod rows;
pub mod template;
