"""The demo's training benchmark: `configs/demo-digits.yaml` from scratch, wall time and accuracy.

    .venv/bin/python benchmarks/train_digits.py [--json benchmarks/results/digits-demo.json]

Target (issue #5): >= 97% top-1 on the held-out digits within 5 minutes on 2 CPU cores. The
time is the whole `focalnet train` command (start-up, data, 30 epochs, validation, saving).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo-digits.yaml"
TARGET_ACC1, TARGET_SECONDS = 97.0, 300.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as output_dir:
        command = [sys.executable, "-m", "focalnet.cli", "train", "--config", str(CONFIG), "--output-dir", output_dir]
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        rows = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    reached = next((row for row in rows if row["val_acc1"] >= TARGET_ACC1), None)
    result = {
        "config": str(CONFIG.name),
        "seconds": round(seconds, 1),
        "epochs": len(rows),
        "final_val_acc1": rows[-1]["val_acc1"],
        "best_val_acc1": max(row["val_acc1"] for row in rows),
        "first_epoch_at_target": reached["epoch"] if reached else None,
        "train_images_per_sec": round(sum(r["images_per_sec"] for r in rows) / len(rows), 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
    }
    print(json.dumps(result, indent=2))
    met = result["final_val_acc1"] >= TARGET_ACC1 and seconds <= TARGET_SECONDS
    print(
        f"final top-1 {result['final_val_acc1']:.2f}% (target >= {TARGET_ACC1}%), {seconds:.0f} s "
        f"(target <= {TARGET_SECONDS:.0f} s): {'met' if met else 'NOT met'}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
