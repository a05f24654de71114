//! Learning-rate schedules as transformers' `get_*_schedule_with_warmup`: the multiplier for
//! optimiser step `step` (0-based: the first update uses step 0, so warmup starts at lr 0).

use crate::recipe::Schedule;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub kind: Schedule,
    pub peak: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LrSchedule {
    /// Learning rate of update number `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        let (step, warmup, total) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        if step < warmup {
            return self.peak * step / warmup.max(1.0);
        }
        let progress = (step - warmup) / (total - warmup).max(1.0);
        let factor = match self.kind {
            Schedule::Constant => 1.0,
            Schedule::Linear => ((total - step) / (total - warmup).max(1.0)).max(0.0),
            Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        };
        self.peak * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: Schedule) -> LrSchedule {
        LrSchedule {
            kind,
            peak: 1.0,
            warmup_steps: 2,
            total_steps: 10,
        }
    }

    // Values printed by transformers 5.23 get_{linear,cosine,constant}_schedule_with_warmup(
    // num_warmup_steps=2, num_training_steps=10) for steps 0..=10.
    #[test]
    fn matches_transformers() {
        let linear = [
            0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0,
        ];
        let cosine = [
            0.0,
            0.5,
            1.0,
            0.9619397662556434,
            0.8535533905932737,
            0.6913417161825449,
            0.5,
            0.30865828381745514,
            0.14644660940672627,
            0.03806023374435663,
            0.0,
        ];
        for step in 0..=10u64 {
            let i = step as usize;
            assert!((sched(Schedule::Linear).lr(step) - linear[i]).abs() < 1e-12);
            assert!((sched(Schedule::Cosine).lr(step) - cosine[i]).abs() < 1e-12);
            let constant = if step < 2 { step as f64 / 2.0 } else { 1.0 };
            assert!((sched(Schedule::Constant).lr(step) - constant).abs() < 1e-12);
        }
    }
}
