//! Autoregressive generation over the KV cache: greedy when temperature is 0, otherwise
//! temperature + nucleus (top-p) sampling from a seeded RNG, so a run is reproducible.
//! Knows token ids only; the command decodes and streams text.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::attention::KvCache;
use super::decoder::Decoder;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 = greedy (argmax, lowest id on ties, as torch.argmax).
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl Sampling {
    pub const GREEDY: Self = Self {
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
    };
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the prompt encodes to no tokens")]
    EmptyPrompt,
    #[error("reading logits back from the device: {0}")]
    Readback(String),
}

/// Generates up to `max_new` tokens after `prompt`, stopping after any id in `stop`. Each new id
/// is passed to `on_token` as it is chosen (for streaming). Returns the new ids.
pub fn generate(
    model: &Decoder,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
    sampling: Sampling,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>, GenerateError> {
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let mut cache = KvCache::default();
    let mut rng = StdRng::seed_from_u64(sampling.seed);
    let mut logits = model.forward_cached(prompt, &mut cache);
    let mut ids = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < max_new {
        let row = crate::transfer::download(logits)
            .map_err(GenerateError::Readback)?
            .try_into_vec::<f32>()
            .map_err(|e| GenerateError::Readback(format!("{e:?}")))?;
        let next = choose(&row, sampling, &mut rng);
        out.push(next);
        on_token(next);
        if stop.contains(&next) || out.len() == max_new {
            break;
        }
        ids.push(next);
        logits = if model.cache_outdated(cache.len, ids.len()) {
            cache = KvCache::default();
            model.forward_cached(&ids, &mut cache)
        } else {
            model.forward_cached(&[next], &mut cache)
        };
    }
    Ok(out)
}

fn choose(logits: &[f32], s: Sampling, rng: &mut StdRng) -> u32 {
    let argmax = || {
        (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
            .unwrap_or(0)
    };
    if s.temperature <= 0.0 {
        return argmax() as u32;
    }
    // softmax(logits / T), highest first, cut at cumulative top_p, renormalised draw.
    let max = logits[argmax()];
    let mut probs: Vec<(usize, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, ((l - max) / s.temperature).exp()))
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f32 = probs.iter().map(|p| p.1).sum();
    let mut kept = 0.0;
    let mut n = 0;
    for p in &probs {
        kept += p.1 / total;
        n += 1;
        if kept >= s.top_p {
            break;
        }
    }
    let kept_total: f32 = probs[..n].iter().map(|p| p.1).sum();
    let mut draw = rng.random::<f32>() * kept_total;
    for &(id, p) in &probs[..n] {
        if draw < p {
            return id as u32;
        }
        draw -= p;
    }
    probs[n - 1].0 as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(
            choose(&[0.1, 3.0, 3.0, -1.0], Sampling::GREEDY, &mut rng),
            1
        );
    }

    #[test]
    fn top_p_keeps_only_the_nucleus_and_the_seed_reproduces() {
        let logits = [5.0, 4.9, -10.0, -10.0];
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.9,
            seed: 7,
        };
        let draws: Vec<u32> = {
            let mut rng = StdRng::seed_from_u64(s.seed);
            (0..200).map(|_| choose(&logits, s, &mut rng)).collect()
        };
        assert!(
            draws.iter().all(|&d| d < 2),
            "a token outside the nucleus was drawn"
        );
        assert!(draws.contains(&0) && draws.contains(&1));
        let mut rng = StdRng::seed_from_u64(s.seed);
        let again: Vec<u32> = (0..200).map(|_| choose(&logits, s, &mut rng)).collect();
        assert_eq!(draws, again);
    }
}
