#!/usr/bin/env python3
"""Reads a run's TensorBoard event files with TensorBoard's own reader (EventAccumulator) and
prints every scalar as JSON: {tag: [[step, value], ...]}. tests/cli.rs compares them with the
run's metrics.jsonl.

Environment: tensorboard==2.21.0 (tests put it on PYTHONPATH from the lora-tune cache).
Usage: python3 tools/reference/tensorboard_scalars.py LOGDIR
"""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main():
    acc = EventAccumulator(sys.argv[1])
    acc.Reload()
    scalars = {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    print(json.dumps(scalars))


if __name__ == "__main__":
    main()
