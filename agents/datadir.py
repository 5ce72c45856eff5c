"""Where the mesh's processes keep their files: `INFERMESH_DATA_DIR`, else ~/.local/share/infermesh.

The one definition: the agent's components (Raft logs, the portal link's state, trainers' work directories), the
portal's embedded default (SQLite, CA, logs) and `infermesh demo` all resolve it here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DATA_DIR_ENV = "INFERMESH_DATA_DIR"


def data_dir(env: Mapping[str, str] | None = None) -> Path:
    """The data directory, absolute (`~` expanded, relative values taken from the working directory)."""
    value = (os.environ if env is None else env).get(DATA_DIR_ENV, "")
    base = Path(value).expanduser() if value else Path.home() / ".local" / "share" / "infermesh"
    return base.resolve()
