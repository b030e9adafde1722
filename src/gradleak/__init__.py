"""gradleak — how much of federated-learning clients' data can the server reconstruct from their updates?

Stages (data flows one way): :mod:`gradleak.data` → :mod:`gradleak.fl` → :mod:`gradleak.attacks` →
:mod:`gradleak.metrics` → :mod:`gradleak.study` → :mod:`gradleak.report`.
"""

from gradleak.errors import DatasetNotFoundError, GradleakError, UnknownNameError, UpdateFileError

__version__ = "0.1.0"

__all__ = ["DatasetNotFoundError", "GradleakError", "UnknownNameError", "UpdateFileError", "__version__"]
