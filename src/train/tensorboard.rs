//! TensorBoard event files (`train.report_to = ["tensorboard"]`): the scalars of each
//! metrics.jsonl record as a `tfevents` file TensorBoard reads. The format is small enough to
//! write here: a sequence of records (u64 length, its masked CRC-32C, the bytes, their masked
//! CRC-32C), each a protobuf `Event` { wall_time = 1, step = 2, file_version = 3, summary = 5 }
//! whose `Summary` holds `Value` { tag = 1, simple_value = 2 } entries. The file is a function
//! of the records: a resumed run rewrites it from the records it kept, then appends.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::metrics::StepRecord;

/// The event file of a run directory (TensorBoard finds it with `--logdir <out>`).
pub fn path_in(out: &Path) -> PathBuf {
    out.join("tensorboard")
        .join("events.out.tfevents.lora-tune")
}

pub struct EventFile {
    pub path: PathBuf,
}

impl EventFile {
    /// Writes the file anew: the version event, then one event per record.
    pub fn create(out: &Path, records: &[StepRecord], wall_time: f64) -> std::io::Result<Self> {
        let path = path_in(out);
        std::fs::create_dir_all(path.parent().expect("in tensorboard/"))?;
        crate::atomic::write_atomic(&path, |f| {
            f.write_all(&record(&version_event(wall_time)))?;
            for r in records {
                f.write_all(&record(&scalars_event(r)))?;
            }
            Ok(())
        })?;
        Ok(Self { path })
    }

    pub fn append(&mut self, r: &StepRecord) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        f.write_all(&record(&scalars_event(r)))?;
        f.flush()
    }
}

/// The scalars of one step under transformers' tag names.
pub fn scalars(r: &StepRecord) -> Vec<(String, f64)> {
    let mut out = vec![
        ("train/loss", r.loss),
        ("train/learning_rate", r.lr),
        ("train/grad_norm", r.grad_norm),
        ("train/tokens_per_second", r.tokens_per_s),
    ];
    let eval = [
        ("eval/loss", r.eval_loss),
        ("eval/perplexity", r.eval_perplexity),
        ("eval/accuracy", r.eval_classes.as_ref().map(|c| c.accuracy)),
        ("eval/macro_f1", r.eval_classes.as_ref().map(|c| c.macro_f1)),
    ];
    out.extend(eval.into_iter().filter_map(|(tag, v)| v.map(|v| (tag, v))));
    let mut out: Vec<(String, f64)> = out.into_iter().map(|(t, v)| (t.into(), v)).collect();
    // TRL's names: `rewards/chosen` → train/rewards/chosen; `eval/rewards/chosen` as it is.
    out.extend(
        r.metrics
            .iter()
            .map(|(name, &v)| match name.starts_with("eval/") {
                true => (name.clone(), v),
                false => (format!("train/{name}"), v),
            }),
    );
    out
}

fn version_event(wall_time: f64) -> Vec<u8> {
    let mut e = Vec::new();
    double(&mut e, 1, wall_time);
    bytes(&mut e, 3, b"brain.Event:2");
    e
}

fn scalars_event(r: &StepRecord) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, v) in scalars(r) {
        let mut value = Vec::new();
        bytes(&mut value, 1, tag.as_bytes());
        key(&mut value, 2, 5);
        value.extend_from_slice(&(v as f32).to_le_bytes());
        bytes(&mut summary, 1, &value);
    }
    let mut e = Vec::new();
    double(&mut e, 1, r.wall_time);
    key(&mut e, 2, 0);
    varint(&mut e, r.step);
    bytes(&mut e, 5, &summary);
    e
}

fn key(out: &mut Vec<u8>, field: u64, wire_type: u64) {
    varint(out, field << 3 | wire_type);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn double(out: &mut Vec<u8>, field: u64, v: f64) {
    key(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    key(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// One TFRecord: length, masked CRC of the length, data, masked CRC of the data.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// TFRecord's mask over CRC-32C (Castagnoli).
fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// CRC-32C, bit by bit (a few hundred bytes a step: speed does not matter).
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check values of RFC 3720 (iSCSI), appendix B.4.
    #[test]
    fn crc32c_matches_the_rfc() {
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
