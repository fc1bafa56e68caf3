"""Benchmark: panoptic quality of 3D cases, medpanoptic vs panoptica vs MONAI, in one run.

    python scripts/bench/metrics.py [--sizes 256,256,256:50 512,512,400:100] [--skip-monai-large] [--busy N]

For each case (a CT phantom as truth, a perturbed copy as prediction) it times
- medpanoptic `panoptic_quality` on all classes (stuff and things);
- panoptica on the thing class (its unmatched-instance pipeline, IoU > 0.5);
- MONAI `PanopticQualityMetric` on all classes (stuff given a non-zero instance id);
checks that TP/FP/FN agree, and prints times and ratios. Goals on CPU: >= 30x faster than
panoptica and >= 300x faster than MONAI. With a GPU, it also times the PQ of the large pair
already on the device (goal <= 10 ms). `--busy N` measures on a loaded machine: N background
processes burn CPU for the whole run (they stop with it), as other jobs would.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import busy_cores  # noqa: E402

from medpanoptic.metrics import panoptic_quality
from medpanoptic.synthetic import ct_phantom


def make_case(shape, n_lesions, seed=0):
    phantom = ct_phantom(shape=shape, spacing=(0.8, 0.8, 1.0), n_lesions=n_lesions, lesion_radius_mm=(3.0, 8.0), seed=seed)
    gt = phantom.pair.numpy().astype(np.int32)
    rng = np.random.default_rng(seed)
    pred = np.roll(gt, shift=(1, -1, 0), axis=(1, 2, 3)).copy()
    lesion_ids = np.unique(pred[1])[1:]
    for dropped in rng.choice(lesion_ids, size=max(1, len(lesion_ids) // 10), replace=False):
        pred[0][pred[1] == dropped] = 1
        pred[1][pred[1] == dropped] = 0
    # a few invented lesions: cubes of 5 voxels in soft tissue
    free = np.argwhere((pred[0][::8, ::8, ::8] == 1))
    for k, (i, j, z) in enumerate(free[rng.choice(len(free), size=5, replace=False)] * 8):
        pred[0, i:i + 5, j:j + 5, z:z + 5] = 3
        pred[1, i:i + 5, j:j + 5, z:z + 5] = 10_000 + k
    return gt, pred, phantom.label_set


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def run_panoptica(pred, gt, thing):
    from panoptica import InputType, Metric, NaiveThresholdMatching, Panoptica_Evaluator

    evaluator = Panoptica_Evaluator(
        expected_input=InputType.UNMATCHED_INSTANCE,
        instance_matcher=NaiveThresholdMatching(Metric.IOU, 0.5, strict_threshold=True),
        instance_metrics=[Metric.IOU, Metric.DSC], global_metrics=[Metric.DSC],
    )
    p = np.where(pred[0] == thing, pred[1], 0).astype(np.int32)
    g = np.where(gt[0] == thing, gt[1], 0).astype(np.int32)
    r = evaluator.evaluate(p, g, verbose=False)["ungrouped"]
    return r.tp, r.fp, r.fn


def run_monai(pred, gt, label_set):
    from monai.metrics import PanopticQualityMetric

    def fmt(p):
        instance = p[1].copy()
        for stuff in label_set.stuff_ids:
            instance[p[0] == stuff] = 100_000 + stuff
        return torch.as_tensor(np.stack([instance, p[0]])[None])

    metric = PanopticQualityMetric(num_classes=label_set.max_id, return_confusion_matrix=True, reduction="none")
    return metric(fmt(pred), fmt(gt))[0].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["256,256,256:50", "512,512,400:100"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--monai-memory-gb", type=float, default=16.0,
                        help="skip MONAI where its per-instance masks would need more memory than this")
    parser.add_argument("--busy", type=int, default=0, help="background CPU-burning processes during the run (load)")
    args = parser.parse_args()
    with busy_cores(args.busy):
        if args.busy:
            print(f"{args.busy} CPU-burning background process(es) running; load average {os.getloadavg()[0]:.1f}")
        run(args)


def run(args: argparse.Namespace) -> None:
    rows = []
    for spec in args.sizes:
        shape_text, lesions = spec.split(":")
        shape = tuple(int(v) for v in shape_text.split(","))
        gt, pred, labels = make_case(shape, int(lesions))
        thing = labels.thing_ids[0]
        panoptic_quality(pred[:, :8], gt[:, :8], labels)  # compile the kernels outside the timing
        ours_t, ours = best_of(lambda: panoptic_quality(pred, gt, labels), args.repeats)
        pan_t, pan = best_of(lambda: run_panoptica(pred, gt, thing), 1)
        assert (ours.tp(thing), ours.fp(thing), ours.fn(thing)) == tuple(int(v) for v in pan), (ours.counts, pan)
        monai_t = float("nan")
        # MONAI keeps one full-volume int32 mask per ground-truth and per predicted instance
        n_masks = len(np.unique(gt[1])) + len(np.unique(pred[1])) + 2 * len(labels.stuff_ids)
        monai_gb = n_masks * gt[0].size * 4 / 1e9
        if monai_gb > args.monai_memory_gb:
            print(f"{shape}: MONAI skipped: its masks would need about {monai_gb:.0f} GB "
                  f"({n_masks} full-volume int32 masks); it was killed for memory at 24 GB", flush=True)
        else:
            monai_t, mon = best_of(lambda: run_monai(pred, gt, labels), 1)
            ids = labels.ids
            np.testing.assert_array_equal(ours.counts[:, :3], mon[[i - 1 for i in ids], :3])
        rows.append((shape, int(lesions), ours.tp(thing), ours.fp(thing), ours.fn(thing), ours_t, pan_t, monai_t))
        print(f"{shape} done: TP/FP/FN things {rows[-1][2:5]} identical across evaluators", flush=True)

    print(f"\n{'case':22}{'TP/FP/FN':>14}{'medpanoptic s':>15}{'panoptica s':>13}{'MONAI s':>10}{'x panoptica':>13}{'x MONAI':>10}")
    for shape, lesions, tp, fp, fn, ours_t, pan_t, monai_t in rows:
        case = f"{'x'.join(map(str, shape))} {lesions}L"
        print(f"{case:22}{f'{tp}/{fp}/{fn}':>14}{ours_t:15.3f}{pan_t:13.2f}{monai_t:10.1f}{pan_t / ours_t:13.1f}{monai_t / ours_t:10.0f}")
    print("goals (CPU): >= 30x panoptica, >= 300x MONAI")

    if torch.cuda.is_available():
        shape, lesions = rows[-1][0], rows[-1][1]
        gt, pred, labels = make_case(shape, lesions)
        g, p = torch.as_tensor(gt).cuda(), torch.as_tensor(pred).cuda()
        for _ in range(3):
            panoptic_quality(p, g, labels)
        torch.cuda.synchronize()
        times = []
        for _ in range(10):
            start = time.perf_counter()
            panoptic_quality(p, g, labels)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        print(f"GPU ({torch.cuda.get_device_name()}): PQ of a {'x'.join(map(str, shape))} pair on the device: "
              f"{1000 * float(np.median(times)):.1f} ms median (goal <= 10 ms)")


if __name__ == "__main__":
    main()
