//! Every way a recipe can be wrong gets `file:line:column: `key`: what is accepted`.

use std::path::{Path, PathBuf};

use lora_tune::plan::{Plan, Stop};
use lora_tune::recipe::RecipeFile;

/// A recipe directory with a real train file, so only the part under test is wrong.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.jsonl"), "{\"text\": \"hello\"}\n").unwrap();
        Self { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("r.toml")
    }

    /// Writes `body` after a valid [model] and [data] and returns the error text.
    fn error(&self, model_and_data: &str, rest: &str) -> String {
        let text = format!("{model_and_data}{rest}");
        std::fs::write(self.path(), &text).unwrap();
        let err = match RecipeFile::load(&self.path()) {
            Err(e) => e,
            Ok(file) => Plan::resolve(&file, Path::new("/work")).expect_err("recipe was accepted"),
        };
        err.to_string()
    }
}

const BASE: &str = "[model]\nsource = \"model.gguf\"\n\n[data]\ntrain = \"train.jsonl\"\n";

fn assert_located(err: &str, line: usize, key: &str, words: &[&str]) {
    assert!(
        err.contains(&format!("r.toml:{line}:")),
        "wanted line {line}: {err}"
    );
    assert!(err.contains(&format!("`{key}`")), "wanted key {key}: {err}");
    for w in words {
        assert!(err.contains(w), "wanted {w:?}: {err}");
    }
}

#[test]
fn unknown_key_names_it_and_lists_accepted_keys() {
    let f = Fixture::new();
    let err = f.error(BASE, "\n[lora]\nrnak = 8\n");
    assert_located(&err, 8, "lora.rnak", &["unknown field `rnak`", "`rank`"]);
}

#[test]
fn unknown_section_is_rejected() {
    let f = Fixture::new();
    let err = f.error(BASE, "\n[trainer]\nlr = 1\n");
    assert_located(&err, 7, "trainer", &["unknown field `trainer`", "`train`"]);
}

#[test]
fn wrong_type_names_key_and_expected_type() {
    let f = Fixture::new();
    let err = f.error(BASE, "\n[lora]\nrank = \"eight\"\n");
    assert_located(&err, 8, "lora.rank", &["invalid type", "u32"]);
}

#[test]
fn bad_enum_value_lists_the_choices() {
    let f = Fixture::new();
    let err = f.error(BASE, "\n[train]\nschedule = \"exponential\"\n");
    assert_located(&err, 8, "train.schedule", &["constant", "linear", "cosine"]);
}

#[test]
fn missing_required_key_points_at_its_section() {
    let f = Fixture::new();
    let err = f.error(
        "[model]\nsource = \"m.gguf\"\n\n[data]\nformat = \"chat\"\n",
        "",
    );
    assert!(err.contains("missing field `train`"), "{err}");
    assert!(err.contains("r.toml:"), "{err}");
}

#[test]
fn syntax_error_has_line_and_column() {
    let f = Fixture::new();
    let err = f.error(BASE, "\n[lora]\nrank = = 8\n");
    assert!(err.contains("r.toml:8:"), "{err}");
}

#[test]
fn rank_zero_is_refused() {
    let f = Fixture::new();
    let err = f.error(BASE, "\n[lora]\nalpha = 16\nrank = 0\n");
    assert_located(&err, 9, "lora.rank", &["at least 1"]);
}

#[test]
fn negative_learning_rate_is_refused() {
    let f = Fixture::new();
    let err = f.error(BASE, "\n[train]\nlr = -1e-4\n");
    assert_located(&err, 8, "train.lr", &["positive"]);
}

#[test]
fn non_finite_values_are_refused() {
    let f = Fixture::new();
    let err = f.error(BASE, "\n[train]\nlr = nan\n");
    assert_located(&err, 8, "train.lr", &["positive"]);
    let err = f.error(BASE, "\n[lora]\nalpha = inf\n");
    assert_located(&err, 8, "lora.alpha", &["positive"]);
}

#[test]
fn dropout_out_of_range_is_refused() {
    let f = Fixture::new();
    let err = f.error(BASE, "\n[lora]\ndropout = 1.0\n");
    assert_located(&err, 8, "lora.dropout", &["[0, 1)"]);
}

#[test]
fn missing_data_file_names_the_absolute_path() {
    let f = Fixture::new();
    let err = f.error(
        "[model]\nsource = \"m.gguf\"\n\n[data]\ntrain = \"nope.jsonl\"\n",
        "",
    );
    assert_located(
        &err,
        5,
        "data.train",
        &["nope.jsonl does not exist", "relative to the recipe"],
    );
    assert!(err.contains(&f.dir.path().display().to_string()), "{err}");
}

#[test]
fn missing_eval_file_is_refused() {
    let f = Fixture::new();
    let err = f.error(BASE, "eval = \"missing-eval.jsonl\"\n");
    assert_located(&err, 6, "data.eval", &["does not exist"]);
}

#[test]
fn exclusive_options_are_refused() {
    let f = Fixture::new();
    let err = f.error(BASE, "\n[train]\nmax_steps = 10\nepochs = 2\n");
    assert_located(&err, 9, "train.epochs", &["not both"]);
    let err = f.error(BASE, "\n[train]\nwarmup_steps = 10\nwarmup_ratio = 0.1\n");
    assert_located(&err, 9, "train.warmup_ratio", &["not both"]);
}

#[test]
fn bad_model_reference_is_located_at_source() {
    let f = Fixture::new();
    let err = f.error(
        "[model]\nsource = \"s3://bucket/m\"\n\n[data]\ntrain = \"train.jsonl\"\n",
        "",
    );
    assert_located(&err, 2, "model.source", &["pip://package==version"]);
}

#[test]
fn bad_sha256_is_refused() {
    let f = Fixture::new();
    let err = f.error(
        "[model]\nsource = { uri = \"m.gguf\", sha256 = \"xyz\" }\n\n[data]\ntrain = \"train.jsonl\"\n",
        "",
    );
    assert_located(&err, 2, "model.source", &["64 hex digits"]);
}

#[test]
fn bad_targets_value_says_what_is_accepted() {
    let f = Fixture::new();
    let err = f.error(BASE, "\n[lora]\ntargets = 3\n");
    assert_located(&err, 8, "lora.targets", &["all-linear"]);
    let err = f.error(BASE, "\n[lora]\ntargets = \"q_proj(\"\n");
    assert_located(&err, 8, "lora.targets", &["not a valid regex"]);
    let err = f.error(BASE, "\n[lora]\ntargets = \".*q_proj\"\nlayers = [0]\n");
    assert_located(&err, 9, "lora.layers", &["regex"]);
    let err = f.error(BASE, "\n[lora]\ntargets = []\n");
    assert_located(&err, 8, "lora.targets", &["is empty"]);
}

#[test]
fn repeated_export_format_is_refused() {
    let f = Fixture::new();
    let err = f.error(BASE, "\n[export]\nformats = [\"peft\", \"peft\"]\n");
    assert_located(&err, 8, "export.formats", &["twice"]);
}

#[test]
fn missing_recipe_file_is_named() {
    let err = RecipeFile::load(Path::new("/no/such/recipe.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/no/such/recipe.toml"), "{err}");
}

#[test]
fn valid_recipe_resolves_paths_relative_to_the_recipe() {
    let f = Fixture::new();
    std::fs::write(f.path(), format!("{BASE}\n[train]\nmax_steps = 3\n")).unwrap();
    let plan = Plan::resolve(&RecipeFile::load(&f.path()).unwrap(), Path::new("/work")).unwrap();
    let dir = std::fs::canonicalize(f.dir.path()).unwrap();
    assert_eq!(plan.data.train, dir.join("train.jsonl"));
    assert_eq!(plan.stop, Stop::MaxSteps(3));
    assert_eq!(plan.out_dir, Path::new("/work/adapters/r"));
}

#[test]
fn shipped_recipes_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(root.join("recipes")).unwrap() {
        let path = entry.unwrap().path();
        let file = RecipeFile::load(&path).unwrap_or_else(|e| panic!("{e}"));
        Plan::resolve(&file, root).unwrap_or_else(|e| panic!("{e}"));
        n += 1;
    }
    assert!(n >= 1);
}

#[test]
fn settings_not_honoured_yet_are_refused_not_ignored() {
    let f = Fixture::new();
    let err = f.error(BASE, "\n[lora]\nuse_dora = true\n");
    assert_located(&err, 8, "lora.use_dora", &["DoRA is not supported yet"]);
    let err = f.error(
        "[model]\nsource = \"model.gguf\"\ndtype = \"bf16\"\n\n[data]\ntrain = \"train.jsonl\"\n",
        "",
    );
    assert_located(
        &err,
        3,
        "model.dtype",
        &["train.gradient_checkpointing = true"],
    );
    let err = f.error(BASE, "pad_to_multiple_of = 0\n");
    assert_located(&err, 6, "data.pad_to_multiple_of", &["at least 1"]);
    std::fs::write(f.dir.path().join("t.parquet"), "x").unwrap();
    let err = f.error(
        "[model]\nsource = \"model.gguf\"\n\n[data]\ntrain = \"t.parquet\"\n",
        "",
    );
    assert_located(&err, 5, "data.train", &["must be a .jsonl or .csv file"]);
}

#[test]
fn keep_quantized_without_gradient_checkpointing_is_refused() {
    let f = Fixture::new();
    let err = f.error(
        "[model]\nsource = \"model.gguf\"\nkeep_quantized = true\n\n[data]\ntrain = \"train.jsonl\"\n",
        "",
    );
    assert_located(
        &err,
        3,
        "model.keep_quantized",
        &["train.gradient_checkpointing = true"],
    );
    let ok = "[model]\nsource = \"model.gguf\"\nkeep_quantized = true\n\n[data]\ntrain = \"train.jsonl\"\n\n[train]\ngradient_checkpointing = true\n";
    std::fs::write(f.path(), ok).unwrap();
    let plan = Plan::resolve(&RecipeFile::load(&f.path()).unwrap(), Path::new("/work")).unwrap();
    assert!(plan.keep_quantized);
}

#[test]
fn init_from_must_be_an_adapter_directory() {
    let f = Fixture::new();
    std::fs::create_dir(f.dir.path().join("empty")).unwrap();
    let err = f.error(BASE, "\n[lora]\ninit_from = \"empty\"\n");
    assert_located(&err, 8, "lora.init_from", &["adapter_model.safetensors"]);
    let err = f.error(BASE, "\n[lora]\ninit_from = \"nowhere\"\n");
    assert_located(&err, 8, "lora.init_from", &["nowhere"]);
}
