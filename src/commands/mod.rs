//! One file per subcommand: wiring between the library modules, no math. Only this module (and
//! training progress) prints. Errors carry context here; `main` prints them once.

mod export;
mod generate;
mod inspect;
mod plan;
mod predict;
mod run;

use crate::cli::{Cli, Command, ExportDtype, ExportFormatArg, MergeDtype};
use crate::recipe::Dtype;
use run::MemoryCheck;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Inspect { model }) => inspect::run(&model),
        Some(Command::Plan { recipe }) => plan::run(&recipe),
        Some(Command::Export {
            adapter,
            format,
            out,
            check,
            base,
            dtype,
        }) => {
            let (Some(format), Some(out)) = (format, out) else {
                return export::check(&adapter, base.as_deref());
            };
            if check {
                export::check(&adapter, base.as_deref())?;
            }
            if format == ExportFormatArg::Gguf {
                return export::run_gguf(&adapter, &out, base.as_deref(), dtype, cli.force);
            }
            let dtype = match dtype {
                ExportDtype::F32 => Dtype::F32,
                ExportDtype::Bf16 => Dtype::Bf16,
                ExportDtype::F16 => Dtype::F16,
                ExportDtype::Q8_0 => anyhow::bail!(
                    "--dtype q8_0 is for --format gguf; safetensors outputs take f32, bf16 or f16"
                ),
            };
            if format == ExportFormatArg::Peft {
                export::run(&adapter, &out, dtype, cli.force)
            } else {
                export::run_merged(&adapter, &out, base.as_deref(), dtype, 5000, cli.force)
            }
        }
        Some(Command::Merge {
            base,
            adapter,
            out,
            dtype,
            max_shard_mb,
        }) => {
            let dtype = match dtype {
                MergeDtype::F32 => Dtype::F32,
                MergeDtype::Bf16 => Dtype::Bf16,
                MergeDtype::F16 => Dtype::F16,
            };
            export::run_merged(&adapter, &out, Some(&base), dtype, max_shard_mb, cli.force)
        }
        Some(Command::Generate {
            base,
            adapter,
            prompt,
            chat,
            max_new_tokens,
            temperature,
            top_p,
            seed,
        }) => {
            let sampling = crate::model::generate::Sampling {
                temperature,
                top_p,
                seed,
            };
            generate::run(
                &base,
                adapter.as_deref(),
                &prompt,
                chat,
                max_new_tokens,
                sampling,
                cli.device,
            )
        }
        Some(Command::Predict {
            adapter,
            file,
            out,
            base,
            max_len,
            batch_size,
        }) => {
            anyhow::ensure!(
                max_len >= 2 && batch_size >= 1,
                "--max-len must be at least 2 and --batch-size at least 1"
            );
            let args = predict::PredictArgs {
                adapter: &adapter,
                file: &file,
                out: &out,
                base: base.as_deref(),
                max_len,
                batch_size,
            };
            predict::run(&args, cli.device)
        }
        Some(Command::Eval { recipe, adapter }) => {
            run::eval(&recipe, adapter.as_deref(), cli.device)
        }
        None => match cli.recipe {
            Some(recipe) => run::run(
                &recipe,
                cli.device,
                cli.resume.as_deref(),
                cli.force,
                MemoryCheck::from_flags(cli.no_memory_check, cli.max_memory),
            ),
            None => anyhow::bail!(
                "no recipe given; try `lora-tune recipes/quickstart.toml` or `lora-tune --help`"
            ),
        },
    }
}
