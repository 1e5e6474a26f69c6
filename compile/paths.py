"""Where the project keeps things: outputs, tuning databases, and the download/build cache."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = PROJECT_ROOT / "dist"
TUNING_ROOT = PROJECT_ROOT / "tuning_logs"
# Android link stubs, runtime wheels, the emulated board, MetaSchedule's logs; MNV2_CACHE moves it.
CACHE_ROOT = Path(os.environ.get("MNV2_CACHE", PROJECT_ROOT / ".cache"))
