#!/usr/bin/env python3
"""transformers' early stopping and best-checkpoint choice on fixed sequences of eval metrics, the
reference for lora-tune's `train.early_stopping_*` and `train.keep_best`.

Each case feeds its metric values, one per evaluation, through transformers' own code in the
order Trainer runs it: `Trainer.evaluate` calls the callbacks' `on_evaluate`
(EarlyStoppingCallback.check_metric_value against the best so far), then
`Trainer._determine_best_metric` moves the best on any strict improvement (no threshold).
Records the evaluation after which training stops (or null) and the best evaluation then.

Writes tests/fixtures/train/early_stopping.json.
Environment: transformers==5.23.0.
Usage: python3 tools/reference/early_stopping.py
"""
import json
import pathlib
import tempfile
import types

from transformers import EarlyStoppingCallback, Trainer, TrainerControl, TrainerState, TrainingArguments

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "train" / "early_stopping.json"

CASES = [
    # (metric, patience, threshold, values)
    ("loss", 2, 0.0, [2.0, 1.9, 1.95, 1.8, 1.85, 1.86, 1.7]),
    ("loss", 1, 0.0, [2.0, 2.0, 1.0]),                        # equal is no improvement
    ("loss", 2, 0.05, [2.0, 1.97, 1.96, 1.5, 1.49]),          # small gains move the best, not patience
    ("loss", 3, 0.0, [3.0, 2.5, 2.0, 1.5]),                   # never stops
    ("accuracy", 2, 0.0, [0.5, 0.6, 0.6, 0.55, 0.7]),
    ("macro_f1", 1, 0.01, [0.30, 0.305, 0.4, 0.39]),
    ("loss", 2, 10.0, [5.0, 4.0, 3.0, 2.0]),                  # a threshold nothing beats
]


def run(metric, patience, threshold, values):
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, metric_for_best_model=metric,
                                 greater_is_better=metric != "loss", eval_strategy="steps",
                                 save_strategy="steps", load_best_model_at_end=True, report_to=[])
    state, control = TrainerState(), TrainerControl()
    callback = EarlyStoppingCallback(early_stopping_patience=patience, early_stopping_threshold=threshold)
    trainer = types.SimpleNamespace(args=args, state=state)  # what _determine_best_metric reads
    for n, value in enumerate(values, start=1):
        state.global_step = n
        metrics = {f"eval_{metric}": value}
        callback.on_evaluate(args, state, control, metrics)
        Trainer._determine_best_metric(trainer, metrics, None)
        if control.should_training_stop:
            return {"stopped_after": n, "best": state.best_global_step}
    return {"stopped_after": None, "best": state.best_global_step}


def main():
    cases = []
    for metric, patience, threshold, values in CASES:
        got = run(metric, patience, threshold, values)
        cases.append({"metric": metric, "patience": patience, "threshold": threshold, "values": values, **got})
        print(cases[-1])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(cases, indent=1) + "\n")


if __name__ == "__main__":
    main()
