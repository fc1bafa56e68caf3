"""Lesions as clinicians count them: RECIST diameters, host organ, burden, follow-up, SR, report page.

One module per job: `measures` (per-lesion measures and per-organ burden), `match` (lesion
identity across time points), `register` (SimpleITK rigid then affine), `track` (the follow-up
study and its RECIST response), `sr` (DICOM SR TID1500 measurement report) and `html` (the
single-file report page).
"""
