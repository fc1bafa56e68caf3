"""Lesions across time points, and the page people read: follow-up studies and the report.

One module per job: `match` (lesion identity across time points), `register` (SimpleITK rigid
then affine), `track` (the follow-up study and its RECIST response) and `html` (the single-file
report page). The per-lesion measures (RECIST axes, host organ) live with the instance table in
`io.measures`, and the DICOM SR writer with the other DICOM writers in `io.dicom_sr`.
"""
