"""Benchmark: panoptic inference against semantic-only inference of the same backbone, and the
grouping post-processing against argmax + cc3d connected components, side by side.

    python scripts/bench/inference.py [--shape 128,128,128] [--roi 96,96,96]

Prints (goals from the network issue):
  panoptic end to end (network + grouping) / semantic-only (network + argmax)   goal <= 1.10
  grouping post-processing / argmax + cc3d connected components                  goal <= 1.0
On a GPU the default volume is 512x512x320 with a 128³ window. Weights are random: speed does
not depend on them, except through how many voxels the grouping sees as things, so the
center and semantic heads are replaced by those of a phantom's truth for the post-processing
comparison.
"""

from __future__ import annotations

import argparse
import time

import cc3d
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import DynUNet

from medpanoptic.nets import PanopticNet
from medpanoptic.postprocess import PostprocessConfig, group_instances
from medpanoptic.synthetic import ct_phantom
from medpanoptic.targets import panoptic_targets

FILTERS = (32, 64, 128, 256, 320)


def timed(fn, device, repeats):
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape")
    parser.add_argument("--roi")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = tuple(int(v) for v in (args.shape or ("512,512,320" if device.type == "cuda" else "128,128,128")).split(","))
    roi = tuple(int(v) for v in (args.roi or ("128,128,128" if device.type == "cuda" else "96,96,96")).split(","))
    spacing = (0.8, 0.8, 1.0)
    phantom = ct_phantom(shape=shape, spacing=spacing, n_lesions=30, seed=5)
    labels = phantom.label_set
    n_classes = labels.max_id + 1
    image = ((phantom.image.as_subclass(torch.Tensor) + 200) / 400).float()[None].to(device)

    panoptic = PanopticNet(3, 1, n_classes, filters=FILTERS).to(device).eval()
    strides = [1] + [2] * (len(FILTERS) - 1)
    semantic = DynUNet(3, 1, n_classes, kernel_size=[3] * len(FILTERS), strides=strides, upsample_kernel_size=strides[1:],
                       filters=list(FILTERS), norm_name="instance", res_block=True).to(device).eval()
    amp = device.type == "cuda"

    def run(net):
        with torch.no_grad(), torch.autocast(device.type, enabled=amp):
            return sliding_window_inference(image, roi, 2, net, overlap=0.25, mode="gaussian")[0].float()

    # heads of the truth, so that the grouping sees as many thing voxels as a trained network would
    targets = panoptic_targets(phantom.pair, labels, spacing, 2.0)
    # channel-first and contiguous, as a network's output is (one_hot().movedim() alone would hand the
    # argmax of the baseline a channel-last layout no network produces)
    logits = (torch.nn.functional.one_hot(targets["semantic"][0], n_classes).movedim(-1, 0).float() * 10).contiguous().to(device)
    center, offset = targets["center"].to(device), targets["offset"].to(device)
    # as the CT bundle's inference.json sets it, vote peaks included
    config = PostprocessConfig(center_threshold=0.5, nms_mm=4.0, vote_sigma_mm=0.75, vote_min=10.0, vote_gap_mm=5.0)

    def grouping(heads_logits):
        return group_instances(heads_logits, center, offset, labels, spacing, config)

    def components(heads_logits):
        label = torch.argmax(heads_logits, dim=0).to(torch.uint8).cpu().numpy()
        things = np.where(np.isin(label, labels.thing_ids), label, 0)
        return cc3d.connected_components(things, connectivity=26)

    run(panoptic), run(semantic)  # warm-up
    t_panoptic = timed(lambda: grouping(panoptic.layout.split(run(panoptic))["semantic"]), device, args.repeats)
    t_semantic = timed(lambda: torch.argmax(run(semantic), dim=0).cpu(), device, args.repeats)
    t_group = timed(lambda: grouping(logits), device, args.repeats)
    t_cc = timed(lambda: components(logits), device, args.repeats)

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{name}, volume {shape}, window {roi}, DynUNet filters {FILTERS}")
    print(f"{'':48}{'time s':>10}")
    print(f"{'panoptic inference end to end':48}{t_panoptic:10.3f}")
    print(f"{'semantic-only inference (same backbone) + argmax':48}{t_semantic:10.3f}")
    print(f"{'grouping post-processing':48}{t_group:10.3f}")
    print(f"{'argmax + cc3d connected components':48}{t_cc:10.3f}")
    print(f"panoptic / semantic-only = {t_panoptic / t_semantic:.2f} (goal <= 1.10)")
    print(f"grouping / argmax + cc3d = {t_group / t_cc:.2f} (goal <= 1.0)")


if __name__ == "__main__":
    main()
