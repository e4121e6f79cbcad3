"""Wall time of train.py's answers that run no job: a typo, bad values and paths, ``--help``.

Each command runs as a user runs it (a fresh ``python train.py ...`` process), ``repeats``
times, interleaved, and the median is reported with the load average around the measurement
(the machine may be shared). For scale, the time a fresh interpreter takes to import torch and
Lightning, which the pre-check no longer does.

    python -m benchmarks.precheck              # 5 repeats
    python -m benchmarks.precheck --repeats 9 --json benchmarks/results/precheck.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "typo (objectve=iwae)": ["train.py", "objectve=iwae"],
    "bad value (k=abc)": ["train.py", "k=abc"],
    "unknown option (model=three_layer)": ["train.py", "model=three_layer"],
    "estimator (objective.estimator=drag)": ["train.py", "objective.estimator=drag"],
    "misspelt ckpt_path": ["train.py", "ckpt_path=outputs/no_such_run/checkpoints/lst.ckpt"],
    "missing data.path": ["train.py", "data=npz", "data.path=/no/such/file.npz"],
    "count above its limit (threads=10000)": ["train.py", "threads=10000"],
    "--help": ["train.py", "--help"],
    "import torch + pytorch_lightning": ["-c", "import torch, pytorch_lightning"],
}


def wall_time(args: list[str]) -> float:
    """Seconds from starting ``python *args`` in the repository to its exit."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, check=False)
    return time.perf_counter() - start


def measure(repeats: int) -> dict:
    """Median and spread of each command's wall time, and the load average before and after."""
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(repeats):  # interleaved: load from other processes falls on all alike
        for name, args in COMMANDS.items():
            times[name].append(wall_time(args))
    return {
        "repeats": repeats,
        "cores": os.cpu_count(),
        "load_average_1m_before": round(load_before, 2),
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "seconds": {
            name: {"median": round(statistics.median(t), 3), "min": round(min(t), 3)}
            for name, t in times.items()
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = measure(args.repeats)
    print(
        f"{result['cores']} cores, load average {result['load_average_1m_before']} before, "
        f"{result['load_average_1m_after']} after; {args.repeats} runs each"
    )
    for name, s in result["seconds"].items():
        print(f"  {name:<38} median {s['median']:.2f} s  (fastest {s['min']:.2f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
