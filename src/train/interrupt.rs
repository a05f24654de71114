//! Ctrl-C / SIGTERM during training: the first one asks the loop to finish its step and write a
//! checkpoint (so `--resume` continues exactly), a second one ends the process at once.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

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
            eprintln!(
                "\nstop requested: finishing this step and writing a checkpoint (again to quit at once)"
            );
        });
    });
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
