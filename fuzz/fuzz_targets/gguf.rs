//! GGUF: header and metadata parsing, tensor bounds, dequantisation of every tensor, and what
//! is rebuilt from the metadata (model config, tokenizer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lora_tune::model::decoder_config::DecoderConfig;
use lora_tune::weights::Inventory;
use lora_tune::weights::gguf::GgufFile;
use lora_tune::weights::host::HostTensors;
use lora_tune::weights::tokenizer::ModelTokenizer;

#[path = "scratch.rs"]
mod scratch;

// Every error is displayed too: its message is code that runs on bad input.
fuzz_target!(|data: &[u8]| {
    let path = scratch::file("gguf", data);
    let _ = Inventory::read(&path).map_err(|e| e.to_string());
    let _ = HostTensors::read(&path).map_err(|e| e.to_string());
    if let Ok(file) = GgufFile::open(&path) {
        let _ = DecoderConfig::from_gguf(&file).map_err(|e| e.to_string());
        let _ = ModelTokenizer::from_gguf(&file).map_err(|e| e.to_string());
    }
});
