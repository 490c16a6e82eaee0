"""The bot as it was before the hot-path work, run beside today's for a before/after in one run.

`python -m bench.before` exports `bot/` at BEFORE_COMMIT (the last commit before e63543e
"KPS hot path: shared in-flight GETs, a gate in front of httpcore's pool, sniffio installed")
into a scratch directory, puts it first on sys.path, hides sniffio the way it was missing then,
and runs `python -m bot` from that copy. RESULTS.md labels its rows `before`.
"""

from __future__ import annotations

import importlib.machinery
import io
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

BEFORE_COMMIT = "7967bc7837b6921b90286d2e671417e257c3ca8d"
ROOT = Path(__file__).resolve().parents[1]


def tree() -> Path:
    """`bot/` at BEFORE_COMMIT, exported once into the temp directory."""
    target = Path(tempfile.gettempdir()) / f"kps-bot-{BEFORE_COMMIT[:12]}"
    if not (target / "bot" / "__main__.py").exists():
        archive = subprocess.run(  # noqa: S603 - git, with a fixed commit
            ["git", "-C", str(ROOT), "archive", "--format=tar", BEFORE_COMMIT, "bot"],  # noqa: S607
            check=True,
            capture_output=True,
        ).stdout
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
    return target


class HideSniffio:
    """Make `import sniffio` fail as it did when it was not installed, search of sys.path included.

    Python does not cache a failed import, so httpcore paid for that search on every call
    (encode/httpcore#1103); a bare ImportError here would hide the cost being measured.
    """

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> Any:
        """Walk sys.path for a name that exists nowhere, then refuse."""
        if name != "sniffio":
            return None
        importlib.machinery.PathFinder.find_spec("_kps_bench_no_such_module")
        raise ModuleNotFoundError("No module named 'sniffio'", name="sniffio")


def main() -> int:
    """Run the old bot exactly as `python -m bot` would have run it."""
    sys.path.insert(0, str(tree()))
    sys.modules.pop("sniffio", None)
    sys.meta_path.insert(0, HideSniffio())
    from bot.__main__ import main as bot_main

    module = sys.modules["bot"]
    if not str(module.__file__).startswith(str(tree())):
        raise RuntimeError(f"imported the wrong bot: {module.__file__}")
    return bot_main([])


if __name__ == "__main__":
    sys.exit(main())
