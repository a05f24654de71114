//! What a training run shows while it runs: an indicatif bar on a terminal, and without one
//! (CI, a pipe) about 50 step lines per run; eval results and notes above the bar. The one place
//! in training that prints.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
    /// Off in tests: nothing is shown, notes included.
    visible: bool,
    total: u64,
}

impl Progress {
    /// A bar over `total` steps at step `at`; hidden unless `visible` and stderr is a terminal.
    pub fn new(total: u64, at: u64, visible: bool) -> Self {
        let bar = ProgressBar::with_draw_target(
            Some(total),
            if visible && std::io::stderr().is_terminal() {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        bar.set_style(
            ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} ETA {eta}")
                .expect("static template"),
        );
        bar.set_position(at);
        Self {
            bar,
            visible,
            total,
        }
    }

    /// A line above the bar, or on stdout when the bar is hidden.
    pub fn say(&self, line: String) {
        if self.visible {
            self.always(line);
        }
    }

    /// A line shown even when progress is off (what a step skipped, where a run resumed).
    pub fn always(&self, line: String) {
        if self.bar.is_hidden() {
            println!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// Step `step` is done; `line` is its loss, learning rate and speed.
    pub fn step(&self, step: u64, line: String) {
        // Without a terminal the bar is hidden: log about 50 lines per run instead.
        if self.visible
            && self.bar.is_hidden()
            && step.is_multiple_of(self.total.div_ceil(50).max(1))
        {
            println!("step {step}/{}: {line}", self.total);
        }
        self.bar.set_message(line);
        self.bar.set_position(step);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
