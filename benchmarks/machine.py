"""What every benchmark prints about the machine it ran on (figures mean little without it)."""

from __future__ import annotations

import os
import platform
import subprocess
from argparse import ArgumentParser
from pathlib import Path

from ctreduce.core.versions import library_versions


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} (1, 5, 15 min) on {os.cpu_count()} CPUs"


def versions(names: list[str]) -> dict[str, str]:
    return library_versions(names)


def add_archive_arguments(parser: ArgumentParser) -> None:
    """The options of the benchmarks that time one generated DICOM archive (volumes x slices of size px)."""
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--volumes", type=int, default=8)
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--data", type=Path, default=Path(".cache/bench-archive"))
