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

/// A recipe that is wrong in one place, and where and how the error must say so.
struct Case {
    /// What is wrong (named in a failure).
    what: &'static str,
    /// The recipe up to and including [data]; `BASE` for most.
    model_and_data: &'static str,
    /// What follows it.
    rest: &'static str,
    line: usize,
    key: &'static str,
    words: &'static [&'static str],
}

const PARQUET: &str = "[model]\nsource = \"model.gguf\"\n\n[data]\ntrain = \"t.parquet\"\n";

const CASES: &[Case] = &[
    Case {
        what: "unknown key",
        model_and_data: BASE,
        rest: "\n[lora]\nrnak = 8\n",
        line: 8,
        key: "lora.rnak",
        words: &["unknown field `rnak`", "`rank`"],
    },
    Case {
        what: "unknown section",
        model_and_data: BASE,
        rest: "\n[trainer]\nlr = 1\n",
        line: 7,
        key: "trainer",
        words: &["unknown field `trainer`", "`train`"],
    },
    Case {
        what: "wrong type",
        model_and_data: BASE,
        rest: "\n[lora]\nrank = \"eight\"\n",
        line: 8,
        key: "lora.rank",
        words: &["invalid type", "u32"],
    },
    Case {
        what: "bad enum value",
        model_and_data: BASE,
        rest: "\n[train]\nschedule = \"exponential\"\n",
        line: 8,
        key: "train.schedule",
        words: &["constant", "linear", "cosine"],
    },
    Case {
        what: "rank zero",
        model_and_data: BASE,
        rest: "\n[lora]\nalpha = 16\nrank = 0\n",
        line: 9,
        key: "lora.rank",
        words: &["at least 1"],
    },
    Case {
        what: "negative learning rate",
        model_and_data: BASE,
        rest: "\n[train]\nlr = -1e-4\n",
        line: 8,
        key: "train.lr",
        words: &["positive"],
    },
    Case {
        what: "NaN learning rate",
        model_and_data: BASE,
        rest: "\n[train]\nlr = nan\n",
        line: 8,
        key: "train.lr",
        words: &["positive"],
    },
    Case {
        what: "infinite alpha",
        model_and_data: BASE,
        rest: "\n[lora]\nalpha = inf\n",
        line: 8,
        key: "lora.alpha",
        words: &["positive"],
    },
    Case {
        what: "dropout out of range",
        model_and_data: BASE,
        rest: "\n[lora]\ndropout = 1.0\n",
        line: 8,
        key: "lora.dropout",
        words: &["[0, 1)"],
    },
    Case {
        what: "missing eval file",
        model_and_data: BASE,
        rest: "eval = \"missing-eval.jsonl\"\n",
        line: 6,
        key: "data.eval",
        words: &["does not exist"],
    },
    Case {
        what: "max_steps and epochs",
        model_and_data: BASE,
        rest: "\n[train]\nmax_steps = 10\nepochs = 2\n",
        line: 9,
        key: "train.epochs",
        words: &["not both"],
    },
    Case {
        what: "warmup steps and ratio",
        model_and_data: BASE,
        rest: "\n[train]\nwarmup_steps = 10\nwarmup_ratio = 0.1\n",
        line: 9,
        key: "train.warmup_ratio",
        words: &["not both"],
    },
    Case {
        what: "unknown model scheme",
        model_and_data: "[model]\nsource = \"s3://bucket/m\"\n\n[data]\ntrain = \"train.jsonl\"\n",
        rest: "",
        line: 2,
        key: "model.source",
        words: &["pip://package==version"],
    },
    Case {
        what: "bad sha256",
        model_and_data: "[model]\nsource = { uri = \"m.gguf\", sha256 = \"xyz\" }\n\n[data]\ntrain = \"train.jsonl\"\n",
        rest: "",
        line: 2,
        key: "model.source",
        words: &["64 hex digits"],
    },
    Case {
        what: "targets of a wrong type",
        model_and_data: BASE,
        rest: "\n[lora]\ntargets = 3\n",
        line: 8,
        key: "lora.targets",
        words: &["all-linear"],
    },
    Case {
        what: "targets regex that does not compile",
        model_and_data: BASE,
        rest: "\n[lora]\ntargets = \"q_proj(\"\n",
        line: 8,
        key: "lora.targets",
        words: &["not a valid regex"],
    },
    Case {
        what: "layers with a regex",
        model_and_data: BASE,
        rest: "\n[lora]\ntargets = \".*q_proj\"\nlayers = [0]\n",
        line: 9,
        key: "lora.layers",
        words: &["regex"],
    },
    Case {
        what: "empty targets",
        model_and_data: BASE,
        rest: "\n[lora]\ntargets = []\n",
        line: 8,
        key: "lora.targets",
        words: &["is empty"],
    },
    Case {
        what: "repeated export format",
        model_and_data: BASE,
        rest: "\n[export]\nformats = [\"peft\", \"peft\"]\n",
        line: 8,
        key: "export.formats",
        words: &["twice"],
    },
    Case {
        what: "DoRA exported as a GGUF LoRA",
        model_and_data: BASE,
        rest: "\n[lora]\nuse_dora = true\n\n[export]\nformats = [\"peft\", \"gguf\"]\n",
        line: 11,
        key: "export.formats",
        words: &["DoRA", "merged"],
    },
    Case {
        what: "a classifier on a 16-bit base",
        model_and_data: "[model]\nsource = \"model\"\ntask = \"classification\"\ndtype = \"bf16\"\n\n[data]\ntrain = \"train.jsonl\"\nformat = \"classification\"\n",
        rest: "",
        line: 4,
        key: "model.dtype",
        words: &["causal-LM decoders"],
    },
    Case {
        what: "an f16 base computing in bf16",
        model_and_data: "[model]\nsource = \"model.gguf\"\ndtype = \"f16\"\ncompute_dtype = \"bf16\"\n\n[data]\ntrain = \"train.jsonl\"\n",
        rest: "",
        line: 3,
        key: "model.dtype",
        words: &["twice"],
    },
    Case {
        what: "a classifier on kept blocks",
        model_and_data: "[model]\nsource = \"model.gguf\"\ntask = \"classification\"\nkeep_quantized = true\n\n[data]\ntrain = \"train.jsonl\"\nformat = \"classification\"\n",
        rest: "",
        line: 4,
        key: "model.keep_quantized",
        words: &["causal-LM decoders"],
    },
    Case {
        what: "a classifier with quantised embeddings",
        model_and_data: "[model]\nsource = \"model.gguf\"\ntask = \"classification\"\nquantize_embeddings = \"q8_0\"\n\n[data]\ntrain = \"train.jsonl\"\nformat = \"classification\"\n",
        rest: "",
        line: 4,
        key: "model.quantize_embeddings",
        words: &["causal-LM decoders"],
    },
    Case {
        what: "padding to a multiple of 0",
        model_and_data: BASE,
        rest: "pad_to_multiple_of = 0\n",
        line: 6,
        key: "data.pad_to_multiple_of",
        words: &["at least 1"],
    },
    Case {
        what: "a data file that is neither JSONL nor CSV",
        model_and_data: PARQUET,
        rest: "",
        line: 5,
        key: "data.train",
        words: &["must be a .jsonl or .csv file"],
    },
    Case {
        what: "init_from without adapter weights",
        model_and_data: BASE,
        rest: "\n[lora]\ninit_from = \"empty\"\n",
        line: 8,
        key: "lora.init_from",
        words: &["adapter_model.safetensors"],
    },
    Case {
        what: "init_from that does not exist",
        model_and_data: BASE,
        rest: "\n[lora]\ninit_from = \"nowhere\"\n",
        line: 8,
        key: "lora.init_from",
        words: &["nowhere"],
    },
    Case {
        what: "LoRA+ ratio zero",
        model_and_data: BASE,
        rest: "\n[train]\nloraplus_lr_ratio = 0\n",
        line: 8,
        key: "train.loraplus_lr_ratio",
        words: &["positive"],
    },
    Case {
        what: "early stopping without an eval split",
        model_and_data: BASE,
        rest: "\n[train]\neval_every = 10\nearly_stopping_patience = 3\n",
        line: 9,
        key: "train.early_stopping_patience",
        words: &["eval split", "data.eval_fraction"],
    },
    Case {
        what: "early stopping without eval_every",
        model_and_data: "[model]\nsource = \"model.gguf\"\n\n[data]\ntrain = \"train.jsonl\"\neval_fraction = 0.2\n",
        rest: "\n[train]\nearly_stopping_patience = 3\n",
        line: 9,
        key: "train.early_stopping_patience",
        words: &["train.eval_every"],
    },
    Case {
        what: "a threshold without patience",
        model_and_data: BASE,
        rest: "\n[train]\nearly_stopping_threshold = 0.01\n",
        line: 8,
        key: "train.early_stopping_threshold",
        words: &["early_stopping_patience"],
    },
    Case {
        what: "keep_best without an eval split",
        model_and_data: BASE,
        rest: "\n[train]\nkeep_best = true\n",
        line: 8,
        key: "train.keep_best",
        words: &["eval split"],
    },
    Case {
        what: "accuracy as a causal LM's best metric",
        model_and_data: "[model]\nsource = \"model.gguf\"\n\n[data]\ntrain = \"train.jsonl\"\neval_fraction = 0.2\n",
        rest: "\n[train]\nkeep_best = true\nmetric_for_best_model = \"accuracy\"\n",
        line: 10,
        key: "train.metric_for_best_model",
        words: &["classification", "loss"],
    },
    Case {
        what: "unknown report_to",
        model_and_data: BASE,
        rest: "\n[train]\nreport_to = [\"wandb\"]\n",
        line: 8,
        key: "train.report_to",
        words: &["tensorboard"],
    },
    Case {
        what: "negative router loss",
        model_and_data: BASE,
        rest: "\n[train]\nrouter_aux_loss_coef = -0.01\n",
        line: 8,
        key: "train.router_aux_loss_coef",
        words: &["0 (off) or positive"],
    },
    Case {
        what: "a [preference] section without a preference method",
        model_and_data: BASE,
        rest: "\n[preference]\nbeta = 0.2\n",
        line: 7,
        key: "preference",
        words: &["train.method", "dpo"],
    },
    Case {
        what: "an unknown train method",
        model_and_data: BASE,
        rest: "\n[train]\nmethod = \"ppo\"\n",
        line: 8,
        key: "train.method",
        words: &["sft", "dpo", "simpo"],
    },
    Case {
        what: "DPO with packing",
        model_and_data: "[model]\nsource = \"model.gguf\"\n\n[data]\ntrain = \"train.jsonl\"\npacking = true\n",
        rest: "\n[train]\nmethod = \"dpo\"\n",
        line: 6,
        key: "data.packing",
        words: &["pair", "false"],
    },
    Case {
        what: "DPO with a non-positive beta",
        model_and_data: BASE,
        rest: "\n[train]\nmethod = \"dpo\"\n\n[preference]\nbeta = 0\n",
        line: 11,
        key: "preference.beta",
        words: &["positive"],
    },
    Case {
        what: "DPO from an existing adapter against the base",
        model_and_data: BASE,
        rest: "\n[lora]\ninit_from = \"adapter\"\n\n[train]\nmethod = \"dpo\"\n",
        line: 8,
        key: "lora.init_from",
        words: &["preference.reference", "initial_adapter"],
    },
    Case {
        what: "SimPO's margin under DPO",
        model_and_data: BASE,
        rest: "\n[train]\nmethod = \"dpo\"\n\n[preference]\nsimpo_gamma = 1.0\n",
        line: 11,
        key: "preference.simpo_gamma",
        words: &["simpo"],
    },
    Case {
        what: "a reference under SimPO",
        model_and_data: BASE,
        rest: "\n[train]\nmethod = \"simpo\"\n\n[preference]\nreference = \"initial_adapter\"\n",
        line: 11,
        key: "preference.reference",
        words: &["SimPO has no reference"],
    },
    Case {
        what: "an unknown [preference] key",
        model_and_data: BASE,
        rest: "\n[train]\nmethod = \"dpo\"\n\n[preference]\nlabel_smoothing = 0.1\n",
        line: 11,
        key: "preference.label_smoothing",
        words: &["beta"],
    },
    Case {
        what: "PiSSA on a base kept in blocks",
        model_and_data: "[model]\nsource = \"model.gguf\"\nkeep_quantized = true\n\n[data]\ntrain = \"train.jsonl\"\n",
        rest: "\n[lora]\ninit = \"pissa\"\n",
        line: 9,
        key: "lora.init",
        words: &["keep_quantized", "kaiming"],
    },
];

/// Each case's error names its line, its key and what is accepted; all failures are listed.
#[test]
fn every_located_error_names_line_key_and_what_is_accepted() {
    let f = Fixture::new();
    std::fs::create_dir(f.dir.path().join("empty")).unwrap();
    std::fs::write(f.dir.path().join("t.parquet"), "x").unwrap();
    std::fs::create_dir(f.dir.path().join("adapter")).unwrap();
    std::fs::write(f.dir.path().join("adapter/adapter_model.safetensors"), "").unwrap();
    let mut failures = Vec::new();
    for case in CASES {
        let err = f.error(case.model_and_data, case.rest);
        let mut wanted = vec![format!("r.toml:{}:", case.line), format!("`{}`", case.key)];
        wanted.extend(case.words.iter().map(|w| w.to_string()));
        let missing: Vec<String> = wanted.into_iter().filter(|w| !err.contains(w)).collect();
        if !missing.is_empty() {
            failures.push(format!("{}: wanted {missing:?} in: {err}", case.what));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn kept_blocks_and_16_bit_bases_are_accepted_with_or_without_checkpointing() {
    for checkpointing in [true, false] {
        for model in ["keep_quantized = true", "dtype = \"bf16\""] {
            let f = Fixture::new();
            let ok = format!(
                "[model]\nsource = \"model.gguf\"\n{model}\n\n[data]\ntrain = \"train.jsonl\"\n\n[train]\ngradient_checkpointing = {checkpointing}\n"
            );
            std::fs::write(f.path(), ok).unwrap();
            let plan =
                Plan::resolve(&RecipeFile::load(&f.path()).unwrap(), Path::new("/work")).unwrap();
            assert_eq!(plan.keep_quantized, model.starts_with("keep"), "{model}");
        }
    }
}

/// Half-precision products on decoders and classifiers: the dense base is stored in the
/// products' type from the load on.
#[test]
fn half_products_are_accepted_and_store_the_base_in_their_type() {
    use lora_tune::dtype::Dtype;
    let classifier = "task = \"classification\"\n";
    for (task, format) in [("", ""), (classifier, "format = \"classification\"\n")] {
        for (compute, stored) in [("bf16", Dtype::Bf16), ("f16", Dtype::F16)] {
            let f = Fixture::new();
            let ok = format!(
                "[model]\nsource = \"model\"\n{task}compute_dtype = \"{compute}\"\n\n[data]\ntrain = \"train.jsonl\"\n{format}"
            );
            std::fs::write(f.path(), ok).unwrap();
            let plan = Plan::resolve(&RecipeFile::load(&f.path()).unwrap(), Path::new("/work"))
                .unwrap_or_else(|e| panic!("{task}{compute}: {e}"));
            assert_eq!(plan.base_storage().dense, stored, "{task}{compute}");
        }
    }
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
