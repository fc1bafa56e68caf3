"""Training on your own data: read a dataset in one of three layouts, check it, fingerprint it, plan.

    datasets     MSD, nnU-Net v2 raw and microscopy (images/ + masks/) -> one dataset description
    phantoms     phantom datasets in each layout, with known truth, for tests and benchmarks
    check        every problem of a dataset at once, by file
    fingerprint  spacing, shape, foreground intensity, and what panoptic needs (instance sizes in mm)
    memory       a memory model of the planned network, checked against a measurement
    plan         the plan: decisions with their reasons, as readable JSON
    transforms   LoadCased and NormalizeChannelsd: what a generated bundle's configs use
    bundle       the MONAI bundle folder generated from a plan
    train        `medpanoptic train`: k-fold training of that bundle, exact resume, out-of-fold cache
    tune         post-processing tuned on the cached out-of-fold network outputs

Nothing is imported here: `medpanoptic phantom` and `medpanoptic --help` stay free of PyTorch.
"""
