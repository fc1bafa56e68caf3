"""Data-derived names become one safe path component; paths outside the output folder are refused."""

from __future__ import annotations

import pytest

from medpanoptic.errors import InputError
from medpanoptic.io.paths import inside, safe_component, unique_components


@pytest.mark.parametrize("hostile", ["..", ".", "../../X", "/../..", "/etc/passwd", "a/../../b", "C:\\Windows",
                                     "\x00evil", "", "   ", ".hidden", "con", "NUL.txt", "x" * 400, "ab\ncd", "$HOME"])
def test_safe_component_is_one_harmless_component(hostile, tmp_path):
    name = safe_component(hostile)
    assert name and "/" not in name and "\\" not in name and "\x00" not in name and "\n" not in name
    assert not name.startswith(".") and name not in ("..", ".")
    assert len(name.encode()) <= 120
    assert name.split(".")[0].lower() not in ("con", "nul")
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_safe_component_keeps_readable_names():
    assert safe_component("patient01_CT") == "patient01_CT"
    assert safe_component("1.2.840.113619.2.55") == "1.2.840.113619.2.55"
    assert safe_component("Thorax 1.0 B31f") == "Thorax_1.0_B31f"


def test_unique_components_never_share_a_folder():
    names = unique_components(["../a", "/a", "a", "A", "..", "."])
    assert len({n.lower() for n in names}) == len(names)
    assert names[0] == "a" and names[1] == "a_2"


def test_inside_refuses_escape_and_links(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert inside(root, root / "case") == (root / "case").resolve()
    with pytest.raises(InputError, match="outside the output folder"):
        inside(root, root / ".." / "x")
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(InputError, match="outside the output folder"):
        inside(root, root / "link" / "victim")
