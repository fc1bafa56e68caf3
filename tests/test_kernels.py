"""The compiled kernels are cached once per machine, even where the installed package is read-only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import medpanoptic._kernels as kernels

PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np, numba, _kernels
label = np.array([[0, 3, 3], [1, 0, 3]], np.int32)
instance = np.array([[0, 2, 2], [0, 0, 5]], np.int32)
hist, count, total, low, high = _kernels.gather_stats(label, instance, 4, 6)
assert count.tolist() == [0, 0, 2, 0, 0, 1], count
print(numba.config.CACHE_DIR, sum(_kernels._pair_stats.stats.cache_hits.values()))
"""


def test_kernels_cache_in_a_temporary_folder_where_nothing_else_is_writable(tmp_path):
    """With the package folder's `__pycache__` and the user cache both impossible to create (a file
    stands where each folder would go), the kernels still load and cache, in the temporary
    directory: the first process compiles, the second loads the cache."""
    package = tmp_path / "site-packages"
    package.mkdir()
    shutil.copy(Path(kernels.__file__), package / "_kernels.py")
    (package / "__pycache__").write_text("not a folder")
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(HOME=str(blocker / "home"), XDG_CACHE_HOME=str(blocker / "cache"), TMPDIR=str(tmp_path / "tmp"),
               NUMBA_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    runs = [subprocess.run([sys.executable, "-c", PROBE, str(package)], env=env, capture_output=True, text=True)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    folders, hits = zip(*(run.stdout.split() for run in runs))
    assert folders[0] == folders[1] == str(tmp_path / "tmp" / f"medpanoptic-numba-{os.getuid()}")
    assert hits == ("0", "1")  # compiled once, then loaded
    assert list(Path(folders[0]).rglob("_kernels._pair_stats-*.nbi"))


def test_the_cache_folder_is_the_package_folder_when_writable():
    expected = os.environ.get("NUMBA_CACHE_DIR") or str(Path(kernels.__file__).parent / "__pycache__")
    assert kernels.cache_folder() == expected
