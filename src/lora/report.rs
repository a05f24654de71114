//! Trainable-vs-frozen parameters, printed as PEFT's `print_trainable_parameters` prints them
//! (`trainable params: 2,442,240 || all params: 136,957,248 || trainable%: 1.7832`), plus a table
//! by module name and the bytes each side takes in f32.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::targets::TargetLayer;

#[derive(Debug, Clone, PartialEq)]
pub struct ParameterReport {
    pub trainable: u64,
    pub frozen: u64,
    /// Module name (`experts.<name>` for a mixture's experts) → (modules adapted, trainable
    /// parameters).
    pub by_module: BTreeMap<String, (usize, u64)>,
}

impl ParameterReport {
    /// `frozen` is the base model's parameter count (tied weights counted once, as PyTorch's
    /// `parameters()` does).
    pub fn new(adapted: &[TargetLayer], frozen: u64) -> Self {
        let mut by_module: BTreeMap<String, (usize, u64)> = BTreeMap::new();
        for a in adapted {
            let e = by_module.entry(group(&a.site.path)).or_default();
            e.0 += 1;
            e.1 += a.parameters();
        }
        let trainable = by_module.values().map(|v| v.1).sum();
        Self {
            trainable,
            frozen,
            by_module,
        }
    }

    /// Adds DoRA's magnitude vectors: one trained value per output row of each adapted layer,
    /// counted with its module as PEFT counts `lora_magnitude_vector`.
    pub fn with_dora(mut self, adapted: &[TargetLayer]) -> Self {
        for a in adapted {
            let out = a.site.out_features as u64;
            self.trainable += out;
            if let Some(e) = self.by_module.get_mut(&group(&a.site.path)) {
                e.1 += out;
            }
        }
        self
    }

    /// Adds a classification head trained in full (PEFT's `modules_to_save`): its parameters are
    /// trainable, and PEFT's wrapper keeps the original head beside the trained copy, so the
    /// same count is frozen too — as PEFT's line counts it.
    pub fn with_head(mut self, name: &str, parameters: u64) -> Self {
        self.trainable += parameters;
        self.frozen += parameters;
        self.by_module.insert(name.to_string(), (1, parameters));
        self
    }

    pub fn all(&self) -> u64 {
        self.trainable + self.frozen
    }

    /// PEFT's line, byte for byte.
    pub fn peft_line(&self) -> String {
        let pct = 100.0 * self.trainable as f64 / self.all() as f64;
        format!(
            "trainable params: {} || all params: {} || trainable%: {pct:.4}",
            thousands(self.trainable),
            thousands(self.all())
        )
    }

    /// The PEFT line, then a table by module and the f32 bytes of each side.
    pub fn render(&self) -> String {
        let mut out = self.peft_line() + "\n";
        let width = (self.by_module.keys().map(String::len).max()).map_or(10, |w| w.max(10));
        for (name, (count, params)) in &self.by_module {
            let unit = match name.starts_with("experts.") {
                true => "experts",
                false => "layers ",
            };
            let _ = writeln!(
                out,
                "  {name:<width$} {count:>3} {unit} {:>12} params",
                thousands(*params)
            );
        }
        let mib = |n: u64| n as f64 * 4.0 / (1024.0 * 1024.0);
        let _ = writeln!(
            out,
            "  trainable {:.1} MiB, frozen {:.1} MiB (f32)",
            mib(self.trainable),
            mib(self.frozen)
        );
        out
    }
}

/// The report's group for module `path`: its name, `experts.<name>` inside a mixture's
/// experts (`model.layers.0.mlp.experts.3.down_proj` → `experts.down_proj`).
fn group(path: &str) -> String {
    let name = path.rsplit('.').next().unwrap_or(path);
    match path.contains(".experts.") {
        true => format!("experts.{name}"),
        false => name.to_string(),
    }
}

/// 136957248 → "136,957,248", as PEFT prints counts.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_like_peft() {
        assert_eq!(thousands(136_957_248), "136,957,248");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
    }
}
