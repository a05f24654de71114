//! Ctrl-C / SIGTERM during training: the first one asks the loop to finish its step and write a
//! checkpoint (so `--resume` continues exactly), a second one ends the process at once.
//! Under mpirun a signal usually means the launcher is ending the job (a rank died, or mpirun
//! itself was interrupted) and kills the ranks moments later, so rank 0 says at once which
//! checkpoint a resume would start from. The graceful stop of a job is SIGUSR1 to mpirun, which
//! forwards it to every rank: they finish the step together and rank 0 writes the checkpoint.
//!
//! A failure in any thread — a panic in a backend's device thread, a lost device, an
//! out-of-memory on the device — ends the process at once with one message naming the device,
//! what failed and the last complete checkpoint ([`end_process_on_panic`]): unwinding would
//! leave the main thread waiting for a device thread that is gone.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::distributed;

static REQUESTED: AtomicBool = AtomicBool::new(false);
static LAST_CHECKPOINT: Mutex<Option<PathBuf>> = Mutex::new(None);
static RESUME_COMMAND: Mutex<String> = Mutex::new(String::new());
static DEVICE: Mutex<Option<String>> = Mutex::new(None);

/// The exit status of a process ended by a failure in one of its threads (Rust's own for a
/// panic).
pub const FAILED: i32 = 101;

/// Records the device the command runs on, for the message a failure prints.
pub fn note_device(name: &str) {
    if let Ok(mut device) = DEVICE.lock() {
        *device = Some(name.to_string());
    }
}

/// Installs a panic hook that ends the whole process with [`FAILED`] and one message: the
/// device, the thread and what failed, and during training the last complete checkpoint and the
/// command that resumes from it. Seen without it: wgpu's GL backend panicked in its device
/// thread ("Could not lock adapter context") and the run then waited for good, SIGTERM
/// included. The message is written to stderr's descriptor directly and the process ends with
/// `_exit`: a lock or an exit handler that the failed thread left held must not hang it too.
pub fn end_process_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let what = (payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        let place = info
            .location()
            .map_or(String::new(), |l| format!(" at {l}"));
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("an unnamed");
        let device = DEVICE.try_lock().ok().and_then(|d| d.clone());
        let device = device.unwrap_or_else(|| "lora-tune".into());
        let mut text = format!("\nerror: {device}: the {thread} thread failed{place}: {what}\n");
        if let Ok(Some(last)) = LAST_CHECKPOINT.try_lock().map(|l| l.clone()) {
            let resume = RESUME_COMMAND
                .try_lock()
                .map(|c| c.clone())
                .unwrap_or_default();
            text += &format!(
                "  last complete checkpoint: {}; continue with: {resume}\n",
                last.display()
            );
        } else if RESUME_COMMAND.try_lock().is_ok_and(|c| !c.is_empty()) {
            text += "  no checkpoint was complete yet: the run starts again from the beginning\n";
        }
        // SAFETY: write(2) of an owned buffer to stderr, then _exit(2); both async-signal-safe.
        unsafe {
            libc::write(2, text.as_ptr().cast(), text.len());
            libc::_exit(FAILED);
        }
    }));
}

/// `LORA_TUNE_INJECT_FAILURE=STEP`: after step STEP a thread of its own panics while the
/// training thread waits for it for good — what a failed device thread does to a run; the test
/// of [`end_process_on_panic`] (tests/wgpu.rs) sets it. Read once.
pub fn inject_failure_after(step: u64) {
    static AT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("LORA_TUNE_INJECT_FAILURE").ok()?.parse().ok());
    if *at != Some(step) {
        return;
    }
    let failing = std::thread::Builder::new()
        .name("device".into())
        .spawn(move || panic!("injected failure after step {step} (LORA_TUNE_INJECT_FAILURE)"));
    if let Ok(failing) = failing {
        let _ = failing.join();
        loop {
            std::thread::park(); // as a run waiting on a device that no longer answers
        }
    }
}

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
