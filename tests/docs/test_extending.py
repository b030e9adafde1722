"""The code in ``docs/extending.md`` runs: a toy attack, defense, model and dataset registered and used.

The snippets run as one program in a fresh interpreter (registering components there leaves this process's
registries as they are), in the order the page gives them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "extending.md"


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_page_has_the_four_extensions() -> None:
    code = "\n".join(snippets())
    for registration in ('@ATTACKS.register("mean-image")', '@DEFENSES.register("round-update")',
                         '@DATASETS.register("checkerboards"', 'create_model(f"{__name__}:TinyNet"'):
        assert registration in code


def test_the_snippets_run(tmp_path: Path) -> None:
    program = tmp_path / "extending_snippets.py"
    program.write_text("\n\n".join(snippets()))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("mean-image round-update")


def test_the_readme_example_runs(tmp_path: Path) -> None:
    """The README's ten-line example, as printed (the attack's 300 iterations on 4 victims)."""
    readme = DOC.parents[1] / "README.md"
    (example,) = [s for s in re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S)
                  if "simulate_and_attack" in s]
    program = tmp_path / "readme_example.py"
    program.write_text(example)
    done = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    leaks, ssim, rule = done.stdout.split(maxsplit=2)
    assert 0 <= int(leaks) <= 4 and 0.0 <= float(ssim) <= 1.0 and rule.strip()
