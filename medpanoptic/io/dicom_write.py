"""Write a volume as a classic single-frame CT Image series (phantoms, tests, benchmarks)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ..errors import InputError
from .atomic import atomic_paths
from .geometry import dicom_planes_from_affine, from_ijk_order

IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"


def write_dicom_series(
    image,
    folder: str | os.PathLike,
    *,
    affine: np.ndarray | None = None,
    series_description: str = "medpanoptic phantom",
    patient_id: str = "PHANTOM",
    patient_name: str = "Phantom^Medpanoptic",
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    rescale_intercept: float = -1024.0,
) -> list[Path]:
    """Write a (1, i, j, k) or (i, j, k) volume in HU as a CT series of one file per slice.

    The geometry (ImagePositionPatient per slice, ImageOrientationPatient, PixelSpacing) comes
    from the image's RAS affine (or `affine`). Stored values are int16 with RescaleIntercept
    `rescale_intercept`; voxels are rounded to whole HU. Returns the files in slice order.
    """
    affine = np.asarray(affine if affine is not None else image.affine, dtype=float)
    volume = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if volume.ndim == 4:
        volume = volume[0]
    if volume.ndim != 3:
        raise InputError(folder, f"a DICOM series needs a 3D volume, got shape {volume.shape}")
    stored = np.rint(volume - rescale_intercept)
    if stored.min() < -32768 or stored.max() > 32767:
        raise InputError(folder, "values do not fit int16 after the rescale intercept")
    stored = stored.astype(np.int16)
    orientation, pixel_spacing, first, step = dicom_planes_from_affine(affine)
    normal = np.cross(orientation[:3], orientation[3:])
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_of_reference = generate_uid()
    now = datetime.datetime.now()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    template = pydicom.Dataset()
    template.SpecificCharacterSet = "ISO_IR 100"
    template.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    template.SOPClassUID = CTImageStorage
    template.StudyDate = template.SeriesDate = template.ContentDate = now.strftime("%Y%m%d")
    template.StudyTime = template.SeriesTime = template.ContentTime = now.strftime("%H%M%S")
    template.AccessionNumber = ""
    template.Modality = "CT"
    template.Manufacturer = "medpanoptic"
    template.ReferringPhysicianName = ""
    template.SeriesDescription = series_description
    template.PatientName = patient_name
    template.PatientID = patient_id
    template.PatientBirthDate = ""
    template.PatientSex = "O"
    template.KVP = "120"
    template.StudyInstanceUID = study_uid
    template.SeriesInstanceUID = series_uid
    template.StudyID = "1"
    template.SeriesNumber = series_number
    template.PatientPosition = "HFS"  # Type 2C, required for CT: head first, supine
    template.BodyPartExamined = "ABDOMEN"  # unpaired: Laterality (Type 2C for paired parts) is rightly absent
    template.AcquisitionNumber = 1
    template.FrameOfReferenceUID = frame_of_reference
    template.PositionReferenceIndicator = ""
    template.ImageOrientationPatient = [f"{v:.10g}" for v in orientation]
    template.PixelSpacing = [f"{v:.10g}" for v in pixel_spacing]
    template.SliceThickness = f"{abs(float(step @ normal)):.10g}"
    template.SamplesPerPixel = 1
    template.PhotometricInterpretation = "MONOCHROME2"
    template.Rows, template.Columns = int(volume.shape[1]), int(volume.shape[0])
    template.BitsAllocated = 16
    template.BitsStored = 16
    template.HighBit = 15
    template.PixelRepresentation = 1
    template.RescaleIntercept = f"{rescale_intercept:g}"
    template.RescaleSlope = "1"
    template.RescaleType = "HU"

    paths = [folder / f"slice_{k:04d}.dcm" for k in range(volume.shape[2])]
    with atomic_paths(*paths) as temps:
        for k, tmp in enumerate(temps):
            ds = pydicom.Dataset()
            ds.update(template)
            sop_uid = generate_uid()
            ds.SOPInstanceUID = sop_uid
            ds.InstanceNumber = k + 1
            position = first + k * step
            ds.ImagePositionPatient = [f"{v:.10g}" for v in position]
            ds.SliceLocation = f"{float(position @ normal):.10g}"
            ds.PixelData = from_ijk_order(stored[:, :, k]).tobytes()  # rows x columns
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = IMPLEMENTATION_UID
            ds.file_meta = meta
            ds.save_as(tmp, enforce_file_format=True)
    return paths
