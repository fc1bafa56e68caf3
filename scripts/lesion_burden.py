"""Worked research script: lesion burden per patient over a cohort, as a CSV and a plot.

    python scripts/lesion_burden.py SCANS... --out burden/ [--bundle ct_lesion_panoptic]

SCANS are files, folders (NIfTI files, DICOM studies: every image series) or a CSV manifest,
as for `medpanoptic segment`. For each scan: the number of lesions, their total volume (mL),
the largest lesion's volume and equivalent-sphere diameter (mm). Unreadable scans are listed
with their reason and skipped.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from medpanoptic.errors import MedPanopticError
from medpanoptic.io.inputs import find_scans
from medpanoptic.segment import Segmenter, bundle_path


def burden(rows: list[dict]) -> dict:
    volumes = [float(r["volume_mm3"]) for r in rows]
    largest = max(volumes, default=0.0)
    return {
        "n_lesions": len(volumes),
        "total_volume_ml": round(sum(volumes) / 1000.0, 3),
        "largest_volume_ml": round(largest / 1000.0, 3),
        "largest_diameter_mm": round(2 * (3 * largest / (4 * math.pi)) ** (1 / 3), 1) if largest else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scans", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--bundle", default="ct_lesion_panoptic")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    segmenter = Segmenter.from_bundle(bundle_path(args.bundle))
    table = []
    for scan in find_scans(args.scans):
        try:
            result = segmenter(scan.path, scan.series_uid, case=scan.case)
        except MedPanopticError as e:
            print(f"skipped {scan.case}: {e}")
            continue
        lesions = [r for r in result.rows() if r["class"] == "lesion"]
        table.append({"case": scan.case, **burden(lesions)})
        print(f"{scan.case}: {table[-1]['n_lesions']} lesion(s), {table[-1]['total_volume_ml']} mL")

    with open(out / "lesion_burden.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["case", "n_lesions", "total_volume_ml", "largest_volume_ml",
                                               "largest_diameter_mm"])
        writer.writeheader()
        writer.writerows(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.4 * len(table)), 3.5))
    ax.bar([r["case"] for r in table], [r["total_volume_ml"] for r in table], color="#c44e52")
    ax.set_ylabel("total lesion volume (mL)")
    ax.tick_params(axis="x", rotation=90)
    fig.tight_layout()
    fig.savefig(out / "lesion_burden.png", dpi=100)
    print(f"wrote {out / 'lesion_burden.csv'} and {out / 'lesion_burden.png'}")


if __name__ == "__main__":
    main()
