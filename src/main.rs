//! The `lora-tune` binary: parse the command line, run one command, print the error chain once.

use std::process::ExitCode;

use clap::Parser;
use lora_tune::{cli::Cli, commands, distributed};

fn main() -> ExitCode {
    lora_tune::allocator::keep_freed_pages();
    // A failure in any thread (a backend's device thread included) ends the process with the
    // device, what failed and the last checkpoint, instead of leaving it waiting.
    lora_tune::train::interrupt::end_process_on_panic();
    let cli = Cli::parse();
    // Under mpirun: join the job (MPI is finalised when `job` drops at the end of main).
    let (job, result) = match distributed::join() {
        Ok(job) => {
            let result = commands::run(cli);
            (Some(job), result)
        }
        Err(err) => (None, Err(err)),
    };
    let Err(err) = result else {
        return ExitCode::SUCCESS;
    };
    let ranks = distributed::ranks();
    // LeaderFailed: rank 0 printed the reason and is ending the job.
    let leader_failed = err.downcast_ref::<distributed::LeaderFailed>().is_some();
    if !leader_failed {
        // One write, so the ranks' messages do not interleave.
        let mut text = String::new();
        if ranks.is_parallel() {
            text += &format!("rank {} of {}: ", ranks.rank, ranks.size);
        }
        text += &format!("error: {err}\n");
        for cause in err.chain().skip(1) {
            text += &format!("  caused by: {cause}\n");
        }
        eprint!("{text}");
    }
    match job {
        // The other ranks may be waiting for this one in a collective: end the job.
        Some(job) if ranks.is_parallel() && distributed::communicating() && !leader_failed => {
            job.abort(1)
        }
        _ => ExitCode::FAILURE,
    }
}
