//! Recipes: TOML parsing with line/key errors, then the validation `plan` runs.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use lora_tune::plan::Plan;
use lora_tune::recipe::RecipeFile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // RecipeFile::load rejects non-UTF-8 before parsing
    };
    let dir = Path::new("/nonexistent-fuzz-dir");
    // Messages are code too: the line/column/key lookup runs when an error is displayed.
    match RecipeFile::parse(&dir.join("fuzz.toml"), text.to_string()) {
        Ok(file) => {
            let _ = Plan::resolve(&file, dir).map_err(|e| e.to_string());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
