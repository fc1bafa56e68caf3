"""Whole slides and volumes larger than memory: lazy region readers, tiled inference, streaming writers.

Every reader gives a `Slide` (see `slide.py`): a spatial shape at level 0, a pixel size in mm
per axis, a pyramid of levels and `read(box, level)` that returns only the pixels asked for.
"""
