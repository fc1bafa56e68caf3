"""Slides in the vendors' layouts, written here by their own libraries' conventions, for the reader tests.

No real whole slide ships inside any installed or PyPI package (see `test_wsi_read.py`), so
these files are written by tifffile (an Aperio-layout SVS, a pyramidal OME-TIFF) and pydicom
(a tiled-full VL Whole Slide Microscopy series), then read back both by medpanoptic and by the
reference library (OpenSlide, tifffile, wsidicom) and compared pixel for pixel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyramid(image: np.ndarray, n: int) -> list[np.ndarray]:
    """`image` and n-1 levels each halved by striding (exact, so every reader agrees)."""
    return [image[:: 2**k, :: 2**k] for k in range(n)]


def write_svs_like(path: Path, image: np.ndarray, mpp: float = 0.25, n_levels: int = 3, tile: int = 256) -> list[np.ndarray]:
    """An Aperio-layout SVS: tiled top-level pages with an `Aperio ... |MPP = ` description (deflate)."""
    import tifffile

    levels = pyramid(image, n_levels)
    h, w = image.shape[:2]
    description = (f"Aperio Image Library v12.0.15\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) -> {w}x{h} "
                   f"|AppMag = 40|MPP = {mpp}|Filename = phantom")
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for k, level in enumerate(levels):
            tif.write(level, tile=(tile, tile), photometric="rgb", compression="deflate",
                      description=description if k == 0 else f"Aperio Image Library v12.0.15\r\n{w}x{h} -> "
                      f"{level.shape[1]}x{level.shape[0]}", metadata=None)
            if k == 0:  # the second page of an SVS is a stripped thumbnail, not a level
                tif.write(image[::8, ::8], photometric="rgb", compression="deflate", metadata=None,
                          description=f"Aperio Image Library v12.0.15\r\n{w}x{h} -> {w // 8}x{h // 8}")
    return levels


def write_dicom_wsi(folder: Path, image: np.ndarray, spacing_mm: float = 0.0005, n_levels: int = 2, tile: int = 128) -> list[np.ndarray]:
    """A DICOM WSI series (one instance per level, TILED_FULL, explicit VR little endian, uncompressed)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    levels = pyramid(image, n_levels)
    for k, level in enumerate(levels):
        rows, cols = level.shape[:2]
        samples = 1 if level.ndim == 2 else level.shape[2]
        padded = np.zeros((-(-rows // tile) * tile, -(-cols // tile) * tile) + level.shape[2:], dtype=np.uint8)
        padded[:rows, :cols] = level
        frames = [padded[y:y + tile, x:x + tile] for y in range(0, padded.shape[0], tile) for x in range(0, padded.shape[1], tile)]
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.Modality, ds.PatientName, ds.PatientID = "SM", "Phantom^Slide", "PHANTOM"
        ds.StudyDate, ds.StudyTime, ds.ContentDate, ds.ContentTime = "20260101", "120000", "20260101", "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "", "", "1", 1, k + 1
        ds.Manufacturer, ds.ContainerIdentifier = "medpanoptic tests", "SLIDE-1"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if k == 0 else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
        ds.DimensionOrganizationType = "TILED_FULL"
        ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = rows, cols
        ds.TotalPixelMatrixFocalPlanes, ds.NumberOfOpticalPaths = 1, 1
        ds.Rows, ds.Columns, ds.NumberOfFrames = tile, tile, len(frames)
        ds.SamplesPerPixel = samples
        ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
        if samples == 3:
            ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.ImagedVolumeWidth = cols * spacing_mm * 2**k
        ds.ImagedVolumeHeight = rows * spacing_mm * 2**k
        ds.ImagedVolumeDepth = 0.001
        origin = Dataset()
        origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem = 0.0, 0.0
        ds.TotalPixelMatrixOriginSequence = [origin]
        ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
        measures = Dataset()
        measures.PixelSpacing = [spacing_mm * 2**k, spacing_mm * 2**k]
        measures.SliceThickness = 0.001
        shared = Dataset()
        shared.PixelMeasuresSequence = [measures]
        ds.SharedFunctionalGroupsSequence = [shared]
        path = Dataset()
        path.OpticalPathIdentifier = "1"
        illumination = Dataset()
        illumination.CodeValue, illumination.CodingSchemeDesignator, illumination.CodeMeaning = "111744", "DCM", "Brightfield illumination"
        path.IlluminationTypeCodeSequence = [illumination]
        color = Dataset()
        color.CodeValue, color.CodingSchemeDesignator, color.CodeMeaning = "414298005", "SCT", "Full Spectrum"
        path.IlluminationColorCodeSequence = [color]
        ds.OpticalPathSequence = [path]
        ds.PixelData = b"".join(np.ascontiguousarray(f).tobytes() for f in frames)
        pydicom.dcmwrite(folder / f"level{k}.dcm", ds, enforce_file_format=True)
    return levels


def write_ome_pyramid(path: Path, image: np.ndarray, pixel_um: float = 0.5, n_levels: int = 3, tile: int = 256,
                      compression: str = "deflate") -> list[np.ndarray]:
    """A pyramidal OME-TIFF as tifffile writes one: level 0 with its reductions in SubIFDs."""
    import tifffile

    levels = pyramid(image, n_levels)
    rgb = image.ndim == 3
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for k, level in enumerate(levels):
            options = dict(tile=(tile, tile), photometric="rgb" if rgb else "minisblack", compression=compression)
            if k == 0:
                tif.write(level, subifds=n_levels - 1, metadata={
                    "axes": "YXS" if rgb else "YX", "PhysicalSizeX": pixel_um, "PhysicalSizeXUnit": "µm",
                    "PhysicalSizeY": pixel_um, "PhysicalSizeYUnit": "µm"}, **options)
            else:
                tif.write(level, subfiletype=1, **options)
    return levels
