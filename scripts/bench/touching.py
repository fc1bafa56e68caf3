"""Benchmark: center/offset grouping against connected components of the *same* network's semantic output,
on unseen 3D CT phantoms where 30% of the lesions touch a neighbour.

    python scripts/bench/touching.py [--bundle bundles/ct_lesion_panoptic] [--cases 8] [--lesions 20]

Loads the bundle's trained weights (trained by its own train.json, see its docs/README.md),
runs the network once per case (`Segmenter.forward`) and groups that one output twice
(`Segmenter.group`): with the bundle's own grouping and with connected components as the
post-processing, and scores both against the phantom truth on the source grid.
Goal (network issue): grouping PQ_things >= 0.85 and at least 0.10 above connected components.
"""

from __future__ import annotations

import argparse

from medpanoptic.metrics import panoptic_quality
from medpanoptic.pair import integer_pair
from medpanoptic.segment import Segmenter, bundle_path
from medpanoptic.synthetic import ct_phantom
from medpanoptic.transforms import PanopticPostprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="ct_lesion_panoptic")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--lesions", type=int, default=20, help="lesions per phantom (30%% of them in touching pairs)")
    parser.add_argument("--seed", type=int, default=900, help="first phantom seed (training used 1000 and above)")
    args = parser.parse_args()
    seg = Segmenter.from_bundle(bundle_path(args.bundle))
    components = PanopticPostprocess(seg.label_set, mode="components")
    totals = {"grouping": None, "components": None}
    touching = 0
    for i in range(args.cases):
        phantom = ct_phantom(n_lesions=args.lesions, touching_fraction=0.3, seed=args.seed + i)
        touching += int(round(args.lesions * 0.3)) // 2 * 2
        output = seg.forward(seg.load(phantom.image))
        for name, post in (("grouping", None), ("components", components)):
            pair = integer_pair(seg.group(output, postprocess=post)["pred"])
            q = panoptic_quality(pair, phantom.pair, phantom.label_set)
            totals[name] = q if totals[name] is None else totals[name] + q
    g, c = totals["grouping"].summary(), totals["components"].summary()
    print(f"{args.cases} unseen phantoms, {args.lesions} lesions each ({touching} of {args.cases * args.lesions} in touching pairs), "
          f"bundle {seg.bundle.name} on {seg.device}")
    print(f"{'':28}{'PQ_things':>10}{'SQ_things':>10}{'RQ_things':>10}")
    for name, s in (("center/offset grouping", g), ("connected components", c)):
        print(f"{name:28}{s['pq_things']:10.3f}{s['sq_things']:10.3f}{s['rq_things']:10.3f}")
    gap = g["pq_things"] - c["pq_things"]
    verdict = {True: "met", False: "NOT met"}
    print(f"grouping - components = {gap:+.4f} (goal >= +0.10: {verdict[gap >= 0.10]}); "
          f"grouping PQ_things {g['pq_things']:.4f} (goal >= 0.85: {verdict[g['pq_things'] >= 0.85]})")


if __name__ == "__main__":
    main()
