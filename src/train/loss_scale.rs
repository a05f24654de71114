//! Dynamic loss scaling for f16 products (`model.compute_dtype = "f16"`), as torch's
//! `GradScaler` does it. f16 has f32's precision nearly but not its range: a gradient below
//! 6·10⁻⁸ rounds to zero in an f16 product. So the loss's gradient is multiplied by `scale`
//! before backward (every gradient with it), and the summed gradients are divided by it again
//! before clipping and AdamW. A step whose gradients overflowed (inf / NaN) is skipped — no
//! update, AdamW's moments and step count untouched — and the scale halved; after
//! [`GROWTH_INTERVAL`] good steps in a row it doubles. The scale is a power of two, so scaling
//! and unscaling change no f32 bits. Its state travels in checkpoints, so a resumed run scales
//! and skips as the uninterrupted one does.

use serde::{Deserialize, Serialize};

/// torch's `GradScaler` defaults.
pub const INITIAL_SCALE: f64 = 65536.0;
pub const GROWTH_INTERVAL: u32 = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    /// What the next step's loss gradient is multiplied by.
    pub scale: f64,
    /// Good steps since the scale last changed.
    pub good_steps: u32,
    /// Steps skipped for overflowed gradients over the whole run.
    pub skipped: u64,
}

impl Default for LossScale {
    fn default() -> Self {
        Self::starting_at(INITIAL_SCALE)
    }
}

impl LossScale {
    pub fn starting_at(scale: f64) -> Self {
        Self {
            scale,
            good_steps: 0,
            skipped: 0,
        }
    }

    /// After a step whose unscaled gradients were `finite` or not: halve and count a skip, or
    /// count a good step and double after [`GROWTH_INTERVAL`] of them.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps == GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale *= 0.5;
            self.good_steps = 0;
            self.skipped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_halves_and_a_run_of_good_steps_doubles() {
        let mut s = LossScale::default();
        s.update(false);
        assert_eq!((s.scale, s.good_steps, s.skipped), (32768.0, 0, 1));
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.update(true);
        }
        assert_eq!((s.scale, s.good_steps), (32768.0, GROWTH_INTERVAL - 1));
        s.update(true);
        assert_eq!((s.scale, s.good_steps, s.skipped), (65536.0, 0, 1));
        s.update(true);
        s.update(false); // an overflow restarts the count
        assert_eq!((s.scale, s.good_steps, s.skipped), (32768.0, 0, 2));
    }
}
