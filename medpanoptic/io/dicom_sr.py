"""DICOM SR measurement reports (TID 1500) of a panoptic result's lesions, via highdicom.

One volumetric ROI measurement group (TID 1411) per lesion: its volume, RECIST long and short
axis and maximal 3D diameter, the host organ as finding site, and a reference to its segment
in the DICOM SEG (by SOP Instance UID and segment number) and to the source series. Each group
carries the lesion's tracking identity: the TrackingUID and TrackingID of its SEG segment, so
that SEG and SR name a lesion alike (and, in a follow-up, alike at every time point).
"""

from __future__ import annotations

import os
from pathlib import Path

import highdicom as hd
import pydicom
from monai.data import MetaTensor
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from .._version import __version__
from ..errors import InputError
from ..labels import LabelSet
from .atomic import atomic_paths
from .dicom_seg import found_segment
from .table import instance_table

MEASURES = {
    "volume_mm3": (codes.SCT.Volume, codes.UCUM.CubicMillimeter, None),
    "recist_long_mm": (codes.SCT.LongAxis, codes.UCUM.Millimeter, None),
    "recist_short_mm": (codes.SCT.ShortAxis, codes.UCUM.Millimeter, None),
    "max_diameter_3d_mm": (codes.SCT.Diameter, codes.UCUM.Millimeter, codes.SCT.Maximum),
}
"""Instance-table column -> (concept name, unit, derivation) of the SR measurement."""

PROCEDURES = {"CT": codes.LN.CTUnspecifiedBodyRegion, "MR": codes.LN.MRIUnspecifiedBodyRegion,
              "PT": codes.LN.PETUnspecifiedBodyRegion, "NM": codes.LN.NMUnspecifiedBodyRegion}


def write_sr(pair, label_set: LabelSet, source: MetaTensor, seg_path: str | os.PathLike, path: str | os.PathLike,
             rows: list[dict] | None = None, series_number: int = 901) -> Path:
    """Write the TID 1500 report of `pair`'s lesions to `path`; `seg_path` is the DICOM SEG written for it.

    `rows` are the instance-table rows (computed from the pair when not given); a `lesion_id`
    or `tracking_uid` column (from `medpanoptic track`) names the lesion instead of the SEG's.
    """
    seg = pydicom.dcmread(seg_path)
    where = str(source.meta.get("filename_or_obj", "source")) if isinstance(source, MetaTensor) else str(source)
    if not isinstance(source, MetaTensor) or not source.meta.get("source_files"):
        raise InputError(where, "a DICOM SR references the source DICOM series; this source has no DICOM files")
    evidence = [pydicom.dcmread(f, stop_before_pixels=True) for f in source.meta["source_files"]]
    if rows is None:
        rows = instance_table(pair, label_set, source if tuple(source.shape[1:]) == tuple(pair.shape[1:]) else None)
    segments, by_uid = _thing_segments(seg)
    found = [(row, by_uid.get(str(row.get("tracking_uid"))) or segments.get(row["instance"])) for row in rows]
    groups = [_lesion_group(row, seg, segment, label_set) for row, segment in found if segment is not None]
    if not groups:
        raise InputError(seg_path, "the DICOM SEG has no lesion segment to report")
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(), name="medpanoptic"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURES.get(str(evidence[0].get("Modality", "CT")), codes.LN.CTUnspecifiedBodyRegion),
        imaging_measurements=groups, title=codes.DCM.ImagingMeasurementReport)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg, *evidence], content=report[0], series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="medpanoptic", is_complete=True,
        series_description="medpanoptic lesion measurements", software_versions=__version__)
    path = Path(path)
    with atomic_paths(path) as (tmp,):
        sr.save_as(tmp)
    return path


def _thing_segments(seg: pydicom.Dataset) -> tuple[dict[int, pydicom.Dataset], dict[str, pydicom.Dataset]]:
    """The thing segments by instance id (their TrackingID's number) and by TrackingUID.

    A follow-up's SEG names lesions by `lesion_id`, not instance: there a row finds its segment by UID.
    """
    by_instance, by_uid = {}, {}
    for item in seg.SegmentSequence:
        found = found_segment(int(item.SegmentNumber), item)
        if found.instance is not None:
            by_instance[found.instance] = item
            by_uid[str(item.get("TrackingUID", ""))] = item
    return by_instance, by_uid


def _lesion_group(row: dict, seg: pydicom.Dataset, segment: pydicom.Dataset, label_set: LabelSet):
    uid = str(row.get("tracking_uid") or segment.TrackingUID)
    name = f"lesion {row['lesion_id']}" if row.get("lesion_id") is not None else str(segment.TrackingID)
    measurements = [hd.sr.Measurement(name=concept, value=float(row[key]), unit=unit, derivation=derivation)
                    for key, (concept, unit, derivation) in MEASURES.items() if row.get(key) is not None]
    sites = None
    host = row.get("host_organ")
    if host and any(c.name == host for c in label_set):
        code = label_set.by_name(host).type
        sites = [hd.sr.FindingSite(anatomic_location=hd.sr.CodedConcept(code.value, code.scheme, code.meaning))]
    referenced = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=int(segment.SegmentNumber),
        source_series=hd.sr.SourceSeriesForSegmentation(seg.ReferencedSeriesSequence[0].SeriesInstanceUID))
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=name), referenced_segment=referenced,
        finding_type=codes.SCT.Lesion, finding_sites=sites, measurements=measurements)


def read_sr(path: str | os.PathLike) -> list[dict]:
    """The lesions of a TID 1500 report: tracking UID and ID, referenced SEG and segment, measures by column name."""
    try:
        sr = hd.sr.srread(path)
    except Exception as e:  # pydicom and highdicom raise many types on a broken file
        raise InputError(path, f"not a readable DICOM SR: {e}") from None
    out = []
    for group in sr.content.get_volumetric_roi_measurement_groups():
        segment = group.referenced_segment
        row = {"tracking_uid": str(group.tracking_uid), "tracking_id": str(group.tracking_identifier),
               "seg_sop_instance_uid": segment.referenced_sop_instance_uid,
               "segment_number": int(segment.referenced_segment_numbers[0]),
               "source_series_uid": segment.source_series_for_segmentation.value,
               "finding_sites": [s.value.value for s in group.finding_sites]}
        for key, (concept, _, _) in MEASURES.items():
            found = group.get_measurements(name=concept)
            if found:
                row[key] = float(found[0].value)
        out.append(row)
    return out
