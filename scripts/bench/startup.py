"""Benchmark: how long `medpanoptic --help` and `medpanoptic info` take to answer, in fresh processes.

    python scripts/bench/startup.py [--runs 5]

Each command runs `--runs` times in a new interpreter (as a user types it); the best wall time
is what the machine allows, the others measure the machine's load. Goals: `--help` <= 1 s,
`info` on a 64x64 NIfTI <= 1.5 s. Also says whether PyTorch was imported (it must not be).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS_S = {"--help": 1.0, "info": 1.5}

PROBE = ("import sys\nfrom medpanoptic.cli import main\nimport contextlib, io\n"
         "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
         "    main(sys.argv[1:])\nprint('torch' in sys.modules, file=sys.stderr)")


def small_nifti(folder: Path) -> Path:
    import nibabel as nib
    import numpy as np

    path = folder / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(64 * 64, dtype=np.int16).reshape(64, 64), np.diag([0.5, 0.7, 1.0, 1.0])), path)
    return path


def best_time(argv: list[str], runs: int) -> float:
    """Fastest of `runs` fresh `python -m medpanoptic ARGV` processes, in seconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "medpanoptic", *argv], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return min(times)


def imports_torch(argv: list[str]) -> bool:
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True)
    return out.stderr.strip().splitlines()[-1] == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="processes per command (the best counts)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        commands = {"--help": ["--help"], "info": ["info", str(small_nifti(Path(tmp)))]}
        baseline = best_time_python(args.runs)
        print(f"{'command':<10}{'best s':>8}{'goal s':>8}  {'torch':<6} verdict   (bare python -c pass: {baseline:.2f} s)")
        for name, argv in commands.items():
            seconds = best_time(argv, args.runs)
            verdict = "ok" if seconds <= GOALS_S[name] else "SLOW"
            print(f"{name:<10}{seconds:>8.2f}{GOALS_S[name]:>8.1f}  {str(imports_torch(argv)):<6} {verdict}")


def best_time_python(runs: int) -> float:
    """The interpreter's own start-up on this machine now: the floor under every figure."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - start)
    return min(times)


if __name__ == "__main__":
    main()
