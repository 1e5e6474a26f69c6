"""Where the project keeps things: outputs, tuning databases, and the download/build cache.

In a source checkout, beside the code (dist/, .cache/). In an installed copy (site-packages), never
inside the installation: artifacts go to ./dist of the working folder, the cache to
~/.cache/mnv2-edge; the shipped tuning databases are read from the installed tuning_logs/.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SOURCE_CHECKOUT = (PROJECT_ROOT / "pyproject.toml").is_file()
DEFAULT_OUT = PROJECT_ROOT / "dist" if SOURCE_CHECKOUT else Path("dist")
TUNING_ROOT = PROJECT_ROOT / "tuning_logs"
# Android link stubs, runtime wheels, the emulated board, MetaSchedule's logs; MNV2_CACHE moves it.
CACHE_ROOT = Path(os.environ.get("MNV2_CACHE") or (PROJECT_ROOT / ".cache" if SOURCE_CHECKOUT
                                                   else Path.home() / ".cache" / "mnv2-edge"))
