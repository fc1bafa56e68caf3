"""A DICOM SEG made by dcmqi's `itkimage2segimage` (another project's writer), for the read-back tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import SimpleITK as sitk

from medpanoptic.io.itk import sitk_from_array
from medpanoptic.io.segments import segment_map


def dcmqi_seg(pair, labels, scan, series_folder: Path, out: Path) -> tuple[Path, list]:
    """`pair` (on `scan`'s grid) written by dcmqi as a SEG of the series in `series_folder`; (path, segments)."""
    numbers, segments = segment_map(pair, labels)
    work = out.parent
    label_map = work / f"{out.name}.numbers.nii.gz"
    sitk.WriteImage(sitk_from_array(numbers, scan.affine.numpy()), str(label_map))

    def code(c):
        return {"CodeValue": c.value, "CodingSchemeDesignator": c.scheme, "CodeMeaning": c.meaning}

    attributes = [[{"labelID": s.number, "SegmentLabel": s.name, "SegmentDescription": s.name,
                    "SegmentAlgorithmType": "MANUAL", "SegmentedPropertyCategoryCodeSequence": code(s.category),
                    "SegmentedPropertyTypeCodeSequence": code(s.type), "recommendedDisplayRGBValue": list(s.color)}
                   for s in segments]]
    meta = {"ContentCreatorName": "Reader^One", "ClinicalTrialSeriesID": "1", "ClinicalTrialTimePointID": "1",
            "SeriesDescription": "corrected", "SeriesNumber": "300", "InstanceNumber": "1", "BodyPartExamined": "",
            "segmentAttributes": attributes}
    meta_path = work / f"{out.name}.meta.json"
    meta_path.write_text(json.dumps(meta))
    run = subprocess.run(["itkimage2segimage", "--inputImageList", str(label_map), "--inputDICOMDirectory",
                          str(series_folder), "--inputMetadata", str(meta_path), "--outputDICOM", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    return out, segments
