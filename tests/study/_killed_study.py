"""Helper for test_runner: run a study and SIGKILL this process mid-way.

``python -m tests.study._killed_study CONFIG federation``: killed when the second federation has recorded its
first round. ``... attack``: killed while the second attack unit is being written (its arrays are on disk, its
record is not).
"""

import os
import signal
import sys

import numpy as np

import gradleak.study.runner as runner
import gradleak.study.units as units
from gradleak.study import load_config, run_study


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    config_path, mode = sys.argv[1], sys.argv[2]
    if mode == "federation":
        rounds_done = {"n": 0}
        original_end = runner._RoundBar.on_round_end

        def on_round_end(self, round, state, metrics):
            original_end(self, round, state, metrics)
            rounds_done["n"] += 1
            if rounds_done["n"] == 3:  # setting 1 finished its 2 rounds, setting 2 its first
                _die()

        runner._RoundBar.on_round_end = on_round_end
    else:
        written = {"n": 0}
        original_write = units.write_unit

        def write_unit(out, unit_id, record, arrays=None):
            if record.get("kind") == "attack":
                written["n"] += 1
                if written["n"] == 2:
                    (out / "units").mkdir(parents=True, exist_ok=True)
                    np.savez_compressed(out / "units" / f"{unit_id}.npz", **arrays)
                    _die()
            return original_write(out, unit_id, record, arrays)

        units.write_unit = write_unit
    run_study(load_config(config_path), progress=False)
    sys.exit("the study finished without being killed")
