//! The per-step cost of data-parallel training (issue #23), on this machine's loopback: for the
//! adapter sets of SmolLM2 r=8 on the seven Llama targets (2,442,240 parameters) and of a
//! Llama-7B shape with r=16 on the same targets (39,976,960), the gradient all-reduce the trainer
//! runs once per optimiser step (`train::step::all_reduce`: flex tensors → one host buffer →
//! MPI sum → tensors), the bare MPI sum of the same buffer, the AdamW update every rank then
//! applies, and the broadcast that "rank 0 updates and sends" would cost instead. Prints one
//! JSON object per set (rank 0; median of 7 after a warm-up). Not a test.
//!
//! Run: cargo bench --features mpi --bench allreduce [-- N]   (re-launches itself under
//! `mpirun -np N`, default 2; as root it adds --allow-run-as-root).

use std::time::Instant;

use burn::tensor::{Distribution, Tensor};

use lora_tune::device::{DeviceChoice, select};
use lora_tune::distributed;
use lora_tune::train::optim::{AdamW, AdamWConfig};
use lora_tune::train::step::all_reduce;

/// (in, out) of the seven Llama targets for hidden `h`, intermediate `i`, kv width `kv`.
fn targets(h: usize, i: usize, kv: usize) -> [(usize, usize); 7] {
    [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]
}

/// Every LoRA factor's shape: A is [r, in], B is [out, r], per target per layer.
fn shapes(layers: usize, r: usize, linears: [(usize, usize); 7]) -> Vec<[usize; 2]> {
    (0..layers)
        .flat_map(|_| linears)
        .flat_map(|(i, o)| [[r, i], [o, r]])
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn timed(reps: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up: first touch of the buffers, MPI connection set-up
    median(
        (0..reps)
            .map(|_| {
                distributed::barrier();
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() -> anyhow::Result<()> {
    if distributed::launched_size().is_none() {
        return relaunch();
    }
    let job = distributed::join()?;
    let ranks = distributed::ranks();
    let device = select(DeviceChoice::Cpu)?.device;
    let sets = [
        ("SmolLM2-135M r=8", shapes(30, 8, targets(576, 1536, 192))),
        (
            "Llama-7B shape r=16",
            shapes(32, 16, targets(4096, 11008, 4096)),
        ),
    ];
    for (name, shapes) in sets {
        let params: usize = shapes.iter().map(|[r, c]| r * c).sum();
        let bytes = params * 4;
        let grads = || -> Vec<Tensor<2>> {
            shapes
                .iter()
                .map(|&s| Tensor::random(s, Distribution::Normal(0.0, 1e-3), &device))
                .collect()
        };
        let sample = grads();
        let reduce = timed(7, || {
            let _ = all_reduce(0.0, sample.clone(), &shapes, &device).unwrap();
        });
        let mut flat = vec![1.0f32; params];
        let mpi_sum = timed(7, || distributed::sum_f32(&mut flat));
        let broadcast = timed(7, || distributed::broadcast_f32(&mut flat));
        let mut weights = grads();
        let mut adamw = AdamW::new(AdamWConfig {
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
            loraplus_lr_ratio: None,
        });
        let update = timed(7, || {
            let named = weights
                .iter_mut()
                .enumerate()
                .map(|(k, t)| (format!("p{k}"), t))
                .collect();
            adamw.step(named, sample.clone(), 1e-4);
            let _ = weights[0].clone().into_data(); // wait for the lazy update
        });
        if ranks.leads() {
            println!(
                "{}",
                serde_json::json!({
                    "adapters": name,
                    "ranks": ranks.size,
                    "parameters": params,
                    "bytes_per_rank_per_step": bytes,
                    "all_reduce_step_s": reduce,
                    "mpi_sum_s": mpi_sum,
                    "mpi_sum_gb_per_s": bytes as f64 / mpi_sum / 1e9,
                    "adamw_update_s": update,
                    "broadcast_s": broadcast,
                })
            );
        }
    }
    drop(job); // finalises MPI
    Ok(())
}

/// Runs this bench again under `mpirun -np N` (N from the first numeric argument, default 2).
fn relaunch() -> anyhow::Result<()> {
    let n = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(2);
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new("mpirun");
    if is_root() {
        cmd.arg("--allow-run-as-root");
    }
    let status = cmd
        .args(["--oversubscribe", "-np", &n.to_string()])
        .arg(exe)
        .status()
        .map_err(|e| anyhow::anyhow!("starting mpirun (install Open MPI: openmpi-bin): {e}"))?;
    anyhow::ensure!(status.success(), "mpirun: {status}");
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}
