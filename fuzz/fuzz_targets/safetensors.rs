//! safetensors: the JSON header, dtypes and shapes, and decoding every tensor to f32.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lora_tune::weights::Inventory;
use lora_tune::weights::host::HostTensors;

#[path = "scratch.rs"]
mod scratch;

// Every error is displayed too: its message is code that runs on bad input.
fuzz_target!(|data: &[u8]| {
    let path = scratch::file("safetensors", data);
    let _ = Inventory::read(&path).map_err(|e| e.to_string());
    let _ = HostTensors::read(&path).map_err(|e| e.to_string());
});
