//! Ctrl-C / SIGTERM during training: the first one asks the loop to finish its step and write a
//! checkpoint (so `--resume` continues exactly), a second one ends the process at once.
//! Under mpirun a signal usually means the launcher is ending the job (a rank died, or mpirun
//! itself was interrupted) and kills the ranks moments later, so rank 0 says at once which
//! checkpoint a resume would start from. The graceful stop of a job is SIGUSR1 to mpirun, which
//! forwards it to every rank: they finish the step together and rank 0 writes the checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::distributed;

static REQUESTED: AtomicBool = AtomicBool::new(false);
static LAST_CHECKPOINT: Mutex<Option<PathBuf>> = Mutex::new(None);
static RESUME_COMMAND: Mutex<String> = Mutex::new(String::new());

/// How to continue this run (`mpirun -np N lora-tune RECIPE --resume OUT`), for the message a
/// signal prints under mpirun.
pub fn set_resume_command(command: String) {
    if let Ok(mut c) = RESUME_COMMAND.lock() {
        *c = command;
    }
}

/// Records the newest complete checkpoint, for the message a signal prints.
pub fn note_checkpoint(dir: &Path) {
    if let Ok(mut last) = LAST_CHECKPOINT.lock() {
        *last = Some(dir.to_path_buf());
    }
}

/// Installs the handler (once per process; later calls are no-ops).
pub fn install() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // A failure to install (another handler owns the signal) only loses the graceful stop.
        let _ = ctrlc::set_handler(|| {
            if REQUESTED.swap(true, Ordering::SeqCst) {
                eprintln!("\nstopping now, without a checkpoint");
                std::process::exit(130);
            }
            let ranks = distributed::ranks();
            if !ranks.is_parallel() {
                eprintln!(
                    "\nstop requested: finishing this step and writing a checkpoint (again to quit at once)"
                );
            } else if ranks.leads() {
                let last = LAST_CHECKPOINT.lock().ok().and_then(|l| l.clone());
                let last = last.map_or("none yet".into(), |d| d.display().to_string());
                let resume = RESUME_COMMAND.lock().map(|c| c.clone()).unwrap_or_default();
                eprintln!(
                    "\nrank 0: stop requested (a signal: under mpirun a rank ended, mpirun names it below, or the job is being stopped); finishing this step with a checkpoint if every rank is still there; last complete checkpoint: {last}; continue with: {resume}"
                );
            }
        });
        #[cfg(feature = "mpi")]
        graceful_stop_on_sigusr1();
    });
}

/// SIGUSR1 (which mpirun forwards to every rank) asks for the graceful stop; the handler only
/// sets the flag, the one thing a signal handler may safely do.
#[cfg(feature = "mpi")]
fn graceful_stop_on_sigusr1() {
    extern "C" fn on_sigusr1(_: libc::c_int) {
        REQUESTED.store(true, Ordering::SeqCst);
    }
    let handler = on_sigusr1 as extern "C" fn(libc::c_int);
    // SAFETY: installs an async-signal-safe handler (one atomic store) for SIGUSR1.
    unsafe {
        libc::signal(libc::SIGUSR1, handler as libc::sighandler_t);
    }
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
