"""Whether an attack's iteration runs compiled (``torch.compile``) or eager, and the record of which ran.

``ReplayAttack.compile`` is ``"auto"`` by default: :class:`AdaptiveIteration` runs the first iterations eagerly,
times them, and compiles the rest of the run when the time it expects to save exceeds what it expects the
compilation to cost:

- no compiler for the device (a C++ compiler on a CPU, Triton on a GPU): eager, with one warning per process;
- an attack of fewer than :data:`MIN_ITERATIONS` iterations: eager (the timing alone would cost more);
- otherwise the eager iteration time ``t`` over :data:`PROBE` iterations gives the remaining eager time
  ``t · remaining``; compiling saves ``(1 - 1/SPEEDUP)`` of it (:data:`SPEEDUP`: a conservative compiled-over-eager
  speed-up of an iteration on a CPU); the cost is the last measured cost when the on-disk cache holds the problem
  (:func:`compile_record`), else :data:`COLD_SECONDS`;
- a problem this process compiled before costs nothing (Dynamo reuses it): compiled from the first iteration;
- after switching, the next :data:`PROBE` compiled iterations are timed too, and where the compiled iteration is
  not faster than the eager probe's, the rest of the run goes back to eager (Inductor can lower a graph to
  slower loops than eager's kernels); that problem then stays eager in this process.

With these constants the break-even is an eager time left of ``cost / (1 - 1/SPEEDUP)``: 90 s before the first
compilation of a problem, 3× the recorded cost after (e.g. 9 s for the 3 s a cached compilation of the cnn at
batch 8 costs). The rule is conservative: it compiles a first run only when about 90 s of eager work is left.

The compiled and the eager iteration compute the same numbers to float rounding (Inductor fuses and reorders
arithmetic), so switching mid-run changes results only at that level. Inductor's caches persist on disk across
processes in :func:`cache_dir` ``/torchinductor`` (unless ``TORCHINDUCTOR_CACHE_DIR`` is set), which makes a
second process's compilation several times cheaper. What ran is reported by :meth:`AdaptiveIteration.describe`
and lands in each reconstruction's ``config["execution"]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gradleak.attacks.base import AttackError

__all__ = ["AdaptiveIteration", "cache_dir", "compile_record", "has_compiler", "problem_key"]

TensorDict = dict[str, Tensor]
IterationFn = Callable[[TensorDict], tuple[Tensor, TensorDict]]

#: attacks shorter than this never compile under ``compile="auto"``
MIN_ITERATIONS = 200
#: eager iterations timed before deciding (after one untimed warm-up iteration)
PROBE = 5
#: a conservative compiled-over-eager speed-up of an attack iteration on a CPU (the small models' smallest)
SPEEDUP = 1.5
#: assumed cost in seconds of a first compilation that no cache holds (measured for the cnn on CIFAR-10: 3–4 s for
#: one image per trial, 36 s for a batch of 8, whose channels-last graph is the slow one to compile)
COLD_SECONDS = 30.0

#: problems compiled in this process (Dynamo's in-memory cache holds them)
_COMPILED: set[str] = set()
#: problems whose compiled iteration this process measured slower than the eager one (they stay eager)
_SLOWER: set[str] = set()
_WARNED: set[str] = set()


def cache_dir() -> Path:
    """gradleak's cache folder: ``$GRADLEAK_CACHE_DIR``, else ``$XDG_CACHE_HOME/gradleak``, else
    ``~/.cache/gradleak``."""
    if os.environ.get("GRADLEAK_CACHE_DIR"):
        return Path(os.environ["GRADLEAK_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gradleak"


def has_compiler(device: torch.device) -> bool:
    """Whether Inductor can generate kernels for ``device``: a C++ compiler on a CPU, Triton on a GPU."""
    if device.type == "cpu":
        return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c)
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return bool(has_triton())
    return False


def check_compiler(device: torch.device) -> None:
    """``compile=True`` is refused up front where :func:`has_compiler` says no."""
    if not has_compiler(device):
        what = "a C++ compiler for torch.compile (g++ or clang++ on the PATH, or $CXX)" if device.type == "cpu" \
            else f"torch.compile support for {device.type} (Triton)"
        raise AttackError(f"compile=True on {device.type} needs {what}; install it or set compile=False "
                          "(or 'auto')")


def _persistent_inductor_cache() -> None:
    """Point Inductor's on-disk caches at :func:`cache_dir` (kept across reboots, unlike its ``/tmp`` default)
    unless the user chose a folder."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    folder = cache_dir() / "torchinductor"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # not writable: Inductor keeps its default
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)


#: problems (architectures, shapes, attack types) one process may compile before Dynamo stops compiling new ones
RECOMPILE_LIMIT = 64


def _allow_recompiles() -> None:
    """Every problem is a new closure of the same iteration code, and Dynamo compiles at most
    ``recompile_limit`` (8) variants of one code object before it silently runs the rest eagerly: a study or a
    benchmark attacks more kinds of problems than that in one process."""
    import torch._dynamo

    config = torch._dynamo.config
    if config.recompile_limit < RECOMPILE_LIMIT:
        config.recompile_limit = RECOMPILE_LIMIT


def problem_key(*parts: Any) -> str:
    """A stable short hash of what decides the compiled graph (architecture, shapes, recipe, options)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


def compile_record() -> Path:
    """The JSON file of measured compilation seconds per problem key (what the on-disk cache holds)."""
    return cache_dir() / "compile_seconds.json"


def _read_record() -> dict[str, float]:
    try:
        data = json.loads(compile_record().read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)} if isinstance(data, dict) \
        else {}


def _write_record(key: str, seconds: float) -> None:
    path = compile_record()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_record()
        data[key] = round(seconds, 3)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the next process estimates again


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class AdaptiveIteration:
    """One attack iteration ``values -> (objective, gradients)``, eager or compiled (see the module docstring).

    ``mode`` is ``"auto"``, ``True`` (compile from the first iteration) or ``False`` (eager).
    """

    def __init__(self, eager: IterationFn, traced: IterationFn, *, mode: bool | str, iterations: int, key: str,
                 device: torch.device) -> None:
        self.eager, self.traced, self.mode, self.iterations = eager, traced, mode, iterations
        self.key, self.device = key, device
        self.calls = 0
        self.probe: list[float] = []
        self.checked: list[float] = []  # compiled iterations timed after switching
        self.compiled: IterationFn | None = None
        self.state: dict[str, Any] = {"iteration": "eager", "reason": "compile=False"}
        if mode is True:
            check_compiler(device)
            self._compile("compile=True")
        elif mode == "auto":
            if not has_compiler(device):
                self.state["reason"] = "no compiler for torch.compile on this device"
                if device.type not in _WARNED:
                    _WARNED.add(device.type)
                    warnings.warn("compile='auto': no C++ compiler (g++/clang++) for torch.compile, so attacks run "
                                  "eagerly, about 2× slower on a CPU; install one to speed them up",
                                  RuntimeWarning, stacklevel=4)
                self.mode = False
            elif iterations < MIN_ITERATIONS:
                self.state["reason"] = f"{iterations} iterations (< {MIN_ITERATIONS}): too short to repay compiling"
                self.mode = False
            elif key in _SLOWER:
                self.state["reason"] = "compiled, this problem's iteration was measured slower than eager earlier"
                self.mode = False
            elif key in _COMPILED:  # costs nothing now: no need to time the eager iteration
                self._compile("compiled earlier in this process (Dynamo's cache holds it)")
                self.state["compile_seconds"] = 0.0  # nothing to measure or to record

    def _compile(self, reason: str) -> None:
        _persistent_inductor_cache()
        _allow_recompiles()
        quiet = logging.getLogger("torch.utils.cpp_extension")  # "No CUDA runtime is found" on a CPU machine
        if quiet.level == logging.NOTSET and self.device.type == "cpu":
            quiet.setLevel(logging.ERROR)
        compiled = torch.compile(self.traced, options={"cpp_wrapper": self.device.type == "cpu"})
        self.compiled = _falling_back(compiled, self.eager, self.state)
        self.state.update(iteration="compiled", reason=reason, switched_at=self.calls)

    def _decide(self) -> None:
        per_iteration = sorted(self.probe)[len(self.probe) // 2]
        remaining = self.iterations - self.calls
        eager_left = per_iteration * remaining
        saving = eager_left * (1.0 - 1.0 / SPEEDUP)
        known = _read_record().get(self.key)
        cost, where = (known, "on-disk cache") if known is not None else (COLD_SECONDS, "first compilation")
        self.state.update(eager_seconds_per_iteration=round(per_iteration, 6), expected_compile_seconds=cost)
        if saving > cost:
            self._compile(f"~{eager_left:.0f} s of eager iterations left, compiling saves ~{saving:.0f} s for "
                          f"~{cost:.0f} s ({where})")
        else:
            self.state["reason"] = (f"~{eager_left:.1f} s of eager iterations left: compiling (~{cost:.0f} s, "
                                    f"{where}) would not repay")
            self.mode = False

    def _recheck(self, seconds: float) -> None:
        """After switching: time :data:`PROBE` compiled iterations and go back to eager if they are not faster
        than the eager probe's."""
        self.checked.append(seconds)
        if len(self.checked) < PROBE:
            return
        compiled = sorted(self.checked)[len(self.checked) // 2]
        eager = sorted(self.probe)[len(self.probe) // 2]
        self.state["compiled_seconds_per_iteration"] = round(compiled, 6)
        if compiled >= eager and self.state["iteration"] == "compiled":
            _SLOWER.add(self.key)
            self.compiled, self.mode = None, False
            self.state.update(iteration="eager", reason=f"compiled, the iteration took {compiled:.4f} s against "
                              f"{eager:.4f} s eager: back to eager", switched_back_at=self.calls)

    def __call__(self, values: TensorDict) -> tuple[Tensor, TensorDict]:
        self.calls += 1
        if self.compiled is not None:
            if "compile_seconds" in self.state:
                if not self.probe or len(self.checked) >= PROBE:
                    return self.compiled(values)
                started = time.perf_counter()
                out = self.compiled(values)
                _sync(self.device)
                self._recheck(time.perf_counter() - started)
                return out
            started = time.perf_counter()
            out = self.compiled(values)
            _sync(self.device)
            seconds = time.perf_counter() - started
            self.state["compile_seconds"] = round(seconds, 3)
            if self.state["iteration"] == "compiled" and self.key not in _COMPILED:  # compiled now, not reused
                _COMPILED.add(self.key)
                _write_record(self.key, seconds)
            return out
        if self.mode != "auto" or self.calls == 1:
            return self.eager(values)
        started = time.perf_counter()
        out = self.eager(values)
        _sync(self.device)
        self.probe.append(time.perf_counter() - started)
        if len(self.probe) == PROBE:
            self._decide()
        return out

    def describe(self) -> dict[str, Any]:
        """Which path ran and why (``iteration``: ``"compiled"`` or ``"eager"``, ``reason``, and where
        measured: ``compile_seconds``, ``switched_at`` iteration, the probe's eager and the compiled seconds per
        iteration, ``switched_back_at`` where the compiled iteration was not faster)."""
        return dict(self.state)


def _falling_back(compiled: IterationFn, eager: IterationFn, state: dict[str, Any]) -> IterationFn:
    """``compiled``, or ``eager`` (with a warning saying why) from the first call on which compiling fails."""
    chosen = [compiled]

    def call(values: TensorDict) -> tuple[Tensor, TensorDict]:
        if chosen[0] is eager:
            return eager(values)
        try:
            return compiled(values)
        except Exception as err:  # a model or platform Inductor cannot compile; the eager iteration is the same
            warnings.warn(f"torch.compile failed ({type(err).__name__}: {str(err)[:300]}); running the eager "
                          "iteration instead", RuntimeWarning, stacklevel=2)
            chosen[0] = eager
            state.update(iteration="eager", reason=f"torch.compile failed ({type(err).__name__})")
            return eager(values)
    return call
