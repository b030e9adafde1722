"""Test-session settings: gradleak's cache (compilation records, Inductor's on-disk cache) in a temporary folder,
never the user's ``~/.cache/gradleak``."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("GRADLEAK_CACHE_DIR", tempfile.mkdtemp(prefix="gradleak-test-cache-"))
