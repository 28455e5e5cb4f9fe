"""How fast the command line answers a settings mistake (a mistyped method, key or mode).

Each command runs ``--repeats`` times as a new process (the console script a user types); the script
prints the median wall seconds and the one line each printed, beside ``reduce`` with a bad method
(which never needed torch) as the reference. Settings are checked before torch is imported, so
every figure should be near that reference, not the 5-7 s that importing torch costs.

    python benchmarks/bench_messages.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from machine import cpu_model, load_line  # noqa: E402

CTREDUCE = str(Path(sys.executable).with_name("ctreduce"))
MISTAKES = [
    ["reduce", ".", "--out", "r", "--method", "hsah"],  # the reference
    ["pretrain", "--method", "simclr"],
    ["pretrain", "swav.n_protoypes=10"],
    ["pretrain", "--data", "export", "--out", "run", "optimizer=adam"],
    ["finetune", "--task", "task", "--out", "ft", "--mode", "lineaer"],
    ["finetune", "--task", "task", "--out", "ft", "epoch=3"],
]


def timed(args: list[str], cwd: str) -> tuple[float, str, int]:
    start = time.perf_counter()
    proc = subprocess.run([CTREDUCE, *args], capture_output=True, text=True, cwd=cwd)
    return time.perf_counter() - start, proc.stderr.strip(), proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{cpu_model()}; {load_line()}")
    with tempfile.TemporaryDirectory() as cwd:
        for command in MISTAKES:
            runs = [timed(command, cwd) for _ in range(args.repeats)]
            seconds = statistics.median(r[0] for r in runs)
            _, message, code = runs[-1]
            lines = message.count("\n") + 1
            print(f"{seconds:5.2f} s  exit {code}  {lines} line(s)  ctreduce {' '.join(command)}\n         {message}")


if __name__ == "__main__":
    main()
