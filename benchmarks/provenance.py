"""What every benchmark result records about how it was made: the command, the git commit (and whether ``src/``
had uncommitted changes), the machine (CPU, GPU if any, torch) and the date. Each benchmark writes it as the
result's ``"provenance"``. The commit, the state of ``src/`` and the start date are read when this module is
imported, at the start of a run, when the code the run measures is loaded: a commit made while a long run goes
on is not credited with its results."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


#: the git state and the date when the run started (this module is imported at the start of every benchmark)
_STARTED = {"commit": _git("rev-parse", "HEAD") or None, "src_dirty": bool(_git("status", "--porcelain", "src")),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def machine() -> dict[str, Any]:
    """The platform, CPU count, torch version and the GPU's name when one is used."""
    import torch

    out: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                           "python": platform.python_version()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def provenance() -> dict[str, Any]:
    """The command line (``python benchmarks/<script> <args>``), the git commit and ``src/`` state at the start,
    the machine, and the UTC dates the run started and finished."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return {
        "command": shlex.join(["python", str(script), *sys.argv[1:]]),
        "git": {"commit": _STARTED["commit"], "src_dirty": _STARTED["src_dirty"]},
        "machine": machine(),
        "started": _STARTED["date"],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
