"""Per-lesion measures on hand-built phantoms of known axes, on an oblique anisotropic grid."""

from __future__ import annotations

import numpy as np
import pytest

from medpanoptic.io.measures import organ_burden, planar_diameters
from medpanoptic.io.table import instance_table, write_instance_table

from .clinical_phantoms import VOXEL_DIAGONAL, Ellipsoid, lesion_phantom, rotation_x, rotation_z

IN_LIVER = Ellipsoid((-10.0, 6.0, 4.0), (10.0, 6.0, 4.0), rotation_z(30.0))  # RECIST 20 x 12 mm
ON_BORDER = Ellipsoid((3.0, -10.0, -6.0), (5.0, 5.0, 5.0))  # liver is x < 4: the border cuts it 1 mm off centre
TILTED = Ellipsoid((14.0, 8.0, -4.0), (6.0, 4.0, 9.0), rotation_z(45.0))  # longest axis along patient z


def border_shell_fraction(radius: float, shell_mm: float, offset: float) -> float:
    """Share of the spherical shell [radius, radius + shell] on the far side of a plane `offset` from the centre."""
    def below(r: float) -> float:  # volume of a ball of radius r with x' < offset, over pi
        return 2 * r**3 / 3 + r * r * offset - offset**3 / 3
    outer = radius + shell_mm
    return (below(outer) - below(radius)) / (4 / 3 * (outer**3 - radius**3))


@pytest.fixture(scope="module")
def rows():
    phantom = lesion_phantom([IN_LIVER, ON_BORDER, TILTED])
    return {r["instance"]: r for r in instance_table(phantom.pair, phantom.label_set, phantom.image)}


def test_recist_axes_in_the_axial_plane_of_an_oblique_grid(rows):
    liver_lesion = rows[1]
    assert liver_lesion["recist_long_mm"] == pytest.approx(20.0, abs=VOXEL_DIAGONAL)
    assert liver_lesion["recist_short_mm"] == pytest.approx(12.0, abs=VOXEL_DIAGONAL)
    assert liver_lesion["max_diameter_3d_mm"] == pytest.approx(20.0, abs=VOXEL_DIAGONAL)
    assert liver_lesion["recist_z_mm"] == pytest.approx(4.0, abs=VOXEL_DIAGONAL)


def test_a_lesion_long_along_z_has_short_axial_axes_and_a_long_3d_diameter(rows):
    tilted = rows[3]
    assert tilted["recist_long_mm"] == pytest.approx(12.0, abs=VOXEL_DIAGONAL)
    assert tilted["recist_short_mm"] == pytest.approx(8.0, abs=VOXEL_DIAGONAL)
    assert tilted["max_diameter_3d_mm"] == pytest.approx(18.0, abs=VOXEL_DIAGONAL)
    assert tilted["host_organ"] == "soft tissue" and tilted["host_fraction"] == pytest.approx(1.0)


def test_host_organ_inside_the_liver_and_on_its_border(rows):
    assert rows[1]["host_organ"] == "liver" and rows[1]["host_fraction"] == pytest.approx(1.0)
    expected = border_shell_fraction(5.0, 3.0, 1.0)  # 0.576 of the shell lies in the liver
    assert rows[2]["host_organ"] == "liver"
    assert rows[2]["recist_long_mm"] == pytest.approx(10.0, abs=VOXEL_DIAGONAL)
    assert rows[2]["host_fraction"] == pytest.approx(expected, abs=0.06)


def test_an_oblique_lesion_is_measured_in_the_patient_axial_plane_not_the_grid_plane():
    # an ellipse tilted 60 degrees out of the axial plane: its axial cross-section is the short one
    lesion = Ellipsoid((-10.0, 4.0, 0.0), (11.0, 5.0, 5.0), rotation_x(0.0) @ np.array(
        [[np.cos(np.radians(60)), 0, -np.sin(np.radians(60))], [0, 1, 0], [np.sin(np.radians(60)), 0, np.cos(np.radians(60))]]))
    phantom = lesion_phantom([lesion])
    row = instance_table(phantom.pair, phantom.label_set)[0]
    # the widest axial section of this ellipsoid along x is 2 / sqrt(cos²/a² + sin²/c²)
    a, c, t = 11.0, 5.0, np.radians(60)
    axial_x = 2 / np.sqrt(np.cos(t) ** 2 / a**2 + np.sin(t) ** 2 / c**2)
    assert row["recist_long_mm"] == pytest.approx(max(axial_x, 10.0), abs=VOXEL_DIAGONAL)
    assert row["max_diameter_3d_mm"] == pytest.approx(22.0, abs=VOXEL_DIAGONAL)


def test_planar_diameters_of_a_rectangle():
    xs, ys = np.meshgrid(np.arange(0, 10.5, 0.5), np.arange(0, 4.5, 0.5), indexing="ij")
    long_mm, short_mm = planar_diameters(np.stack([xs.ravel(), ys.ravel()], 1), 0.5)
    assert long_mm == pytest.approx(np.hypot(10, 4))
    assert short_mm > 0 and short_mm < 4 * np.hypot(10, 4) / 10 + 0.5


def test_burden_per_organ_and_the_table_columns(rows, tmp_path):
    burden = {b["host_organ"]: b for b in organ_burden(list(rows.values()))}
    assert burden["liver"]["n_lesions"] == 2 and burden["soft tissue"]["n_lesions"] == 1
    assert burden["liver"]["volume_mm3"] == pytest.approx(rows[1]["volume_mm3"] + rows[2]["volume_mm3"])
    assert burden["liver"]["sum_long_axis_mm"] == pytest.approx(rows[1]["recist_long_mm"] + rows[2]["recist_long_mm"])
    header = write_instance_table(list(rows.values()), tmp_path / "t")["csv"].read_text().splitlines()[0].split(",")
    for column in ("recist_long_mm", "recist_short_mm", "max_diameter_3d_mm", "host_organ", "host_fraction"):
        assert column in header
