//! The peak-memory formula `plan` prints and `run` checks, on the tiny Llama fixture, against
//! the byte counts worked out by hand from its config (hidden 64, MLP 96, 4 heads, 2 layers,
//! vocab 256, 94,528 parameters). How close it comes to measured peaks on SmolLM2 is in
//! BENCHMARKS.md (benches/memory.sh).

use lora_tune::memory::{BatchShape, MemoryEstimate};

#[test]
fn the_estimate_counts_weights_adapters_activations_and_logits() {
    let config = lora_tune::model::read_decoder_config(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/llama/tiny-llama/config.json"
        )
        .as_ref(),
    )
    .unwrap();
    let shape = BatchShape {
        batch: 2,
        seq: 64,
        scored: 100,
        checkpointing: false,
    };
    let e = MemoryEstimate::training(&config, 7_424, shape, true);
    assert_eq!(e.weights, 94_528 * 4);
    assert_eq!(e.adapters, 4 * 7_424 * 4); // parameters, gradients, two AdamW moments
    // Per layer: T = 128 tokens × (4·64 + 2·2·16 + 2·96) floats (four hidden-sized buffers —
    // the norms' outputs are recomputed — k and v once per key/value head, gate and up: down's
    // input is recomputed), plus one score buffer of 2·4·64·64.
    // Dropout masks are drawn again in backward, not kept.
    assert_eq!(
        e.activations,
        2 * (128 * (4 * 64 + 2 * 2 * 16 + 2 * 96) + 2 * 4 * 64 * 64) * 4
    );
    // Logits only where a label follows: 100 of the 128 positions; on flex 2 vocabulary-sized
    // buffers per position (the gradient written over the logits, then scaled), 4 with a GPU's
    // generic ops.
    assert_eq!(e.logits, 2 * 100 * 256 * 4);
    let on_gpu = MemoryEstimate::training(&config, 7_424, shape, false);
    assert_eq!(on_gpu.logits, 4 * 100 * 256 * 4);
    // A GPU's attention kernels keep no score buffer.
    assert_eq!(
        on_gpu.activations,
        2 * 128 * (4 * 64 + 2 * 2 * 16 + 2 * 96) * 4
    );
    assert_eq!(e.total(), 1_488_128);
    assert!(
        e.render(shape).starts_with("1.5 MB (weights 0.4 MB"),
        "{}",
        e.render(shape)
    );

    // Doubling the sequence doubles the per-token part and quadruples the attention scores.
    let long = MemoryEstimate::training(
        &config,
        7_424,
        BatchShape {
            batch: 2,
            seq: 128,
            scored: 200,
            checkpointing: false,
        },
        true,
    );
    assert_eq!(
        long.activations,
        2 * (256 * (4 * 64 + 2 * 2 * 16 + 2 * 96) + 2 * 4 * 128 * 128) * 4
    );
    // The head's logits are computed 256 labelled positions at a time (a vocabulary of 256).
    let many = MemoryEstimate::training(
        &config,
        7_424,
        BatchShape {
            scored: 1000,
            ..shape
        },
        true,
    );
    assert_eq!(many.logits, 2 * 256 * 256 * 4);

    // Gradient checkpointing keeps each layer's input (T hidden-sized floats per layer), then
    // holds the logits or one layer's recomputed activations, never both.
    let recomputing = BatchShape {
        checkpointing: true,
        ..shape
    };
    let checkpointed = MemoryEstimate::training(&config, 7_424, recomputing, true);
    assert_eq!(checkpointed.activations, 2 * 128 * 64 * 4);
    // The tape plus the softmax backward's two score-sized gradients.
    let one_layer = (128 * (4 * 64 + 2 * 2 * 16 + 2 * 96) + 3 * 2 * 4 * 64 * 64) * 4;
    assert_eq!(checkpointed.recomputed_layer, one_layer);
    assert_eq!(checkpointed.logits, e.logits); // 100 labelled positions: one chunk
    assert_eq!(
        checkpointed.total(),
        e.weights + e.adapters + checkpointed.activations + one_layer.max(e.logits)
    );
    // Chunked the same way.
    let many = BatchShape {
        scored: 1000,
        ..recomputing
    };
    let chunked = MemoryEstimate::training(&config, 7_424, many, true);
    assert_eq!(chunked.logits, 2 * 256 * 256 * 4);
    assert!(
        checkpointed
            .render(recomputing)
            .ends_with("gradient checkpointing)")
    );
}
