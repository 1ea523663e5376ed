"""The full benchmark: focalnet-tiny, -tiny-lrf and -base in every mode against transformers and timm.

    .venv/bin/python benchmarks/run_benchmarks.py [extra `focalnet benchmark` options, e.g. --device cuda]

Prints the tables and writes benchmarks/results/<date>-<host>.json.
"""

from __future__ import annotations

import datetime
import socket
import sys
from pathlib import Path

from focalnet.benchmark import DEFAULT_PRESETS, MODES
from focalnet.cli import main

RESULTS = Path(__file__).resolve().parent / "results"


def default_argv() -> list[str]:
    date = datetime.date.today().isoformat()
    output = RESULTS / f"{date}-{socket.gethostname()}.json"
    return ["benchmark", "--presets", *DEFAULT_PRESETS, "--modes", *MODES, "--json", str(output)]


if __name__ == "__main__":
    sys.exit(main([*default_argv(), *sys.argv[1:]]))
