"""GPU check of planned training (issue #14): one fold on the GPU with AMP, s/epoch, memory model vs measurement.

    python scripts/bench/gpu_training.py [--epochs 4] [--cases 6] [--geometry ct] [--work DIR]
                                         [--budget-fraction 0.9] [--no-tests]

For when a GPU is lent; on a machine without one it refuses at once with one line ("no CUDA
device"), before writing anything. With one, it:

1. writes a small CT-like phantom dataset (`planning.phantoms.PRESETS[--geometry]`, MSD layout);
2. plans it for this GPU: the budget is `--budget-fraction` of `torch.cuda.get_device_properties(0)
   .total_memory` less what the CUDA context already holds (the memory model counts the step's
   tensors only, what `torch.cuda.max_memory_allocated` reports);
3. trains fold 0 for `--epochs` epochs through `medpanoptic.planning.train.train` (AMP is on
   whenever CUDA is: the bundle's `train.json`), timing every epoch and reading the peak
   allocated memory at the end of each;
4. prints the plan's patch, batch and `estimated_memory_gb` beside the measured peak (and their
   ratio: the model should lie within 1.5x; above 1 it is conservative, AMP's float16 activations
   make it so), s/epoch (first epoch apart: it includes cuDNN's autotuning and the cache fill);
5. runs the GPU path of the tests (`pytest -k "cuda or gpu"`; none selected is reported as such).

The figures also go to `WORK/gpu_training.json`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GB = 1024**3
ROOT = Path(__file__).resolve().parents[2]


def require_cuda():
    """The CUDA device's properties, or a one-line refusal (exit 2) where there is none."""
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_training.py: error: no CUDA device (torch.cuda.is_available() is False): "
                 "this benchmark needs a GPU")
    return torch.cuda.get_device_properties(0)


def memory_budget_gb(total_bytes: int, fraction: float) -> float:
    """The planner's budget: a fraction of the GPU's memory, less what the CUDA context holds already."""
    import torch

    torch.zeros(1, device="cuda")  # creates the context
    free, total = torch.cuda.mem_get_info()
    context = total - free
    return max(fraction * total_bytes - context, 0.0) / GB


class EpochProbe:
    """Ignite handler: wall time of every epoch and the peak allocated CUDA memory at its end."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.seconds: list[float] = []
        self.peak_gb: list[float] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._end)

    def _start(self, engine) -> None:
        import torch

        torch.cuda.synchronize()
        self.started = time.perf_counter()

    def _end(self, engine) -> None:
        import torch

        torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - self.started)
        self.peak_gb.append(torch.cuda.max_memory_allocated() / GB)


def plan_dataset(work: Path, geometry: str, cases: int, budget_gb: float, epochs: int) -> Path:
    """Phantom dataset -> plan (2 folds, `epochs` epochs) written to `work/plan.json`."""
    from medpanoptic.planning.phantoms import write_phantom_dataset
    from medpanoptic.planning.plan import make_plan, save_plan

    dataset = write_phantom_dataset(work / "dataset", "msd", cases, geometry, seed=0)
    plan = make_plan(dataset, gpu_memory_gb=budget_gb)
    plan["decisions"]["folds"]["value"] = 2
    plan["decisions"]["epochs"]["value"] = epochs
    return save_plan(plan, work / "plan.json")


def gpu_tests() -> dict:
    """The tests of the GPU path, run here (pytest exit 5: none selected)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-k", "cuda or gpu", str(ROOT / "tests")],
                          capture_output=True, text=True, check=False, cwd=ROOT)
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
    return {"returncode": done.returncode, "summary": "no GPU test selected" if done.returncode == 5 else tail[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--cases", type=int, default=6, help="phantom training cases (default 6)")
    parser.add_argument("--geometry", default="ct", help="a planning.phantoms.PRESETS name (default ct)")
    parser.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    parser.add_argument("--budget-fraction", type=float, default=0.9,
                        help="fraction of the GPU's memory the plan may use (default 0.9)")
    parser.add_argument("--no-tests", action="store_true", help="skip the GPU tests")
    args = parser.parse_args(argv)
    props = require_cuda()  # before anything is written

    import torch

    from medpanoptic.planning.plan import load_plan
    from medpanoptic.planning.train import train

    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_training_"))
    work.mkdir(parents=True, exist_ok=True)
    budget = memory_budget_gb(props.total_memory, args.budget_fraction)
    print(f"device: {props.name}, {props.total_memory / GB:.1f} GB; plan budget {budget:.1f} GB", flush=True)
    plan_path = plan_dataset(work, args.geometry, args.cases, budget, args.epochs)
    decisions = {k: v["value"] for k, v in load_plan(plan_path)["decisions"].items()}
    print(f"plan: patch {decisions['patch_size']}, batch {decisions['batch_size']}, "
          f"{len(decisions['network']['filters'])} levels, estimated {decisions['estimated_memory_gb']:.2f} GB",
          flush=True)
    probe = EpochProbe()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    train(plan_path, 0, epochs=args.epochs, out=work / "bundle", handlers=[probe])
    total = time.perf_counter() - started
    steady = probe.seconds[1:] or probe.seconds
    peak = max(probe.peak_gb)
    result = {
        "device": props.name, "total_memory_gb": props.total_memory / GB, "budget_gb": budget,
        "patch_size": decisions["patch_size"], "batch_size": decisions["batch_size"],
        "estimated_memory_gb": decisions["estimated_memory_gb"], "max_memory_allocated_gb": peak,
        "estimate_over_measured": decisions["estimated_memory_gb"] / peak if peak else None,
        "seconds_per_epoch": sum(steady) / len(steady), "first_epoch_s": probe.seconds[0],
        "epoch_seconds": probe.seconds, "train_and_tune_s": total, "amp": True,
    }
    print(f"s/epoch {result['seconds_per_epoch']:.2f} (first {probe.seconds[0]:.2f}); memory: estimated "
          f"{result['estimated_memory_gb']:.2f} GB, max_memory_allocated {peak:.2f} GB "
          f"(ratio {result['estimate_over_measured']:.2f})", flush=True)
    if not args.no_tests:
        result["gpu_tests"] = gpu_tests()
        print(f"GPU tests: {result['gpu_tests']['summary']}", flush=True)
    (work / "gpu_training.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {work / 'gpu_training.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
