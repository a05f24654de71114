//! Dataset rows: the same bytes as a JSONL file and as a CSV file, format auto-detected, bad
//! rows skipped and counted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lora_tune::data::rows::read_rows;
use lora_tune::recipe::DataFormat;

#[path = "scratch.rs"]
mod scratch;

// Every error is displayed too: its message is code that runs on bad input.
fuzz_target!(|data: &[u8]| {
    for ext in ["jsonl", "csv"] {
        let path = scratch::file(ext, data);
        let _ = read_rows(&path, DataFormat::Auto, false).map_err(|e| e.to_string());
        let _ = read_rows(&path, DataFormat::Auto, true).map_err(|e| e.to_string());
    }
});
