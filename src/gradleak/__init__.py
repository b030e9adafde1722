"""gradleak — how much of federated-learning clients' data can the server reconstruct from their updates?

Stages (data flows one way): :mod:`gradleak.data` → :mod:`gradleak.fl` → :mod:`gradleak.attacks` →
:mod:`gradleak.metrics` → :mod:`gradleak.study` → :mod:`gradleak.report`.
"""

from gradleak.errors import DatasetNotFoundError, GradleakError, UnknownNameError, UpdateFileError

__version__ = "0.1.0"

__all__ = [
    "AuditResult",
    "DatasetNotFoundError",
    "GradleakError",
    "UnknownNameError",
    "UpdateFileError",
    "__version__",
    "simulate_and_attack",
]


def __getattr__(name: str):  # lazy: `import gradleak` stays light
    if name in ("simulate_and_attack", "AuditResult"):
        from gradleak import audit

        return getattr(audit, name)
    raise AttributeError(f"module 'gradleak' has no attribute {name!r}")
