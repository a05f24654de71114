//! One file per subcommand: wiring between the library modules, no math; no command imports
//! another. [`session`] is the console side of [`crate::prepare`] that the recipe-driven
//! commands share. Only this module (and training progress) prints. Errors carry context here;
//! `main` prints them once.

mod eval;
mod export;
mod generate;
mod inspect;
mod plan;
mod predict;
mod run;
mod session;

use crate::cli::{Cli, Command};
use crate::memory::MemoryCheck;
use crate::recipe::ExportFormat;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let ranks = crate::distributed::ranks();
    anyhow::ensure!(
        !ranks.is_parallel()
            || cli.command.is_none()
            || matches!(cli.command, Some(Command::Plan { .. })),
        "under mpirun ({} ranks) lora-tune trains (`mpirun -np N lora-tune RECIPE`) and plans; run the other commands without mpirun",
        ranks.size
    );
    match cli.command {
        Some(Command::Inspect { model }) => inspect::run(&model),
        Some(Command::Plan { recipe, ranks }) => plan::run(
            &recipe,
            ranks.map_or(crate::distributed::ranks().size, |n| n as usize),
        ),
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
            anyhow::ensure!(
                format == ExportFormat::Gguf || dtype.float().is_some(),
                "--dtype q8_0 is for --format gguf; safetensors outputs take f32, bf16 or f16"
            );
            export::run(&export::ExportArgs {
                adapter: &adapter,
                format,
                out: &out,
                dtype,
                base: base.as_deref(),
                max_shard_mb: crate::export::DEFAULT_MAX_SHARD_MB,
                force: cli.force,
            })
        }
        Some(Command::Merge {
            base,
            adapter,
            out,
            dtype,
            max_shard_mb,
        }) => export::run(&export::ExportArgs {
            adapter: &adapter,
            format: ExportFormat::Merged,
            out: &out,
            dtype: dtype.into(),
            base: Some(&base),
            max_shard_mb,
            force: cli.force,
        }),
        Some(Command::Generate {
            base,
            adapter,
            prompt,
            chat,
            template,
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
                base.as_deref(),
                adapter.as_deref(),
                &prompt,
                template.as_deref().map(Some).or(chat.then_some(None)),
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
            eval::run(&recipe, adapter.as_deref(), cli.device)
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
