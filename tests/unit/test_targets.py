"""Target profiles: lookup, aliases, sm_XY, typo errors, and the Jetson facts they encode."""

from __future__ import annotations

import pytest

from rescompile.engine.targets import JETPACK_TENSORRT, TARGETS, get_target, target_names
from rescompile.errors import UsageError


@pytest.mark.parametrize(
    ("name", "cc", "dla", "trt_major"),
    [
        ("jetson-agx-orin", (8, 7), 2, 10),
        ("jetson-orin-nx-16gb", (8, 7), 2, 10),
        ("jetson-orin-nx-8gb", (8, 7), 1, 10),
        ("jetson-orin-nano", (8, 7), 0, 10),
        ("jetson-agx-xavier", (7, 2), 2, 8),
        ("jetson-xavier-nx", (7, 2), 2, 8),
        ("jetson-thor", (11, 0), 0, 10),
        ("jetson-agx-orin-jp7", (8, 7), 2, 11),
    ],
)
def test_jetson_profiles_follow_the_notes(name: str, cc: tuple[int, int], dla: int, trt_major: int) -> None:
    t = get_target(name)
    assert (t.compute_capability, t.dla_cores, t.tensorrt_major, t.kind) == (cc, dla, trt_major, "jetson")
    assert JETPACK_TENSORRT[t.jetpack or ""][0] == trt_major


def test_jetpack_6_ships_tensorrt_10_3() -> None:
    assert get_target("jetson-orin-nx").tensorrt_version == "10.3"
    assert get_target("jetson-orin-nx").jetpack == "6.2"


def test_aliases_case_and_underscores_resolve_to_the_canonical_profile() -> None:
    assert get_target("jetson-orin-nx").name == "jetson-orin-nx-16gb"
    assert get_target("Jetson_Orin_NX_8GB").name == "jetson-orin-nx-8gb"
    assert get_target("AGX-ORIN").name == "jetson-agx-orin"


@pytest.mark.parametrize(("text", "cc"), [("sm_86", (8, 6)), ("sm87", (8, 7)), ("SM_120", (12, 0)), ("sm_110", (11, 0))])
def test_generic_compute_capability(text: str, cc: tuple[int, int]) -> None:
    t = get_target(text)
    assert t.compute_capability == cc and t.kind == "desktop" and t.dla_cores == 0 and t.sm == "sm_{}{}".format(*cc)


def test_typo_lists_the_names_and_suggests_the_closest() -> None:
    with pytest.raises(UsageError) as err:
        get_target("jetson-orin-nz")
    msg = str(err.value)
    for name in target_names():
        assert name in msg
    assert "did you mean 'jetson-orin-nx'" in msg


def test_nonsense_name_gets_no_wild_suggestion() -> None:
    with pytest.raises(UsageError) as err:
        get_target("nope")
    assert "did you mean" not in str(err.value)


def test_out_of_range_compute_capability_is_refused() -> None:
    with pytest.raises(UsageError, match="compute capability"):
        get_target("sm_31")


def test_names_and_aliases_are_unique_and_workspace_fits_memory() -> None:
    keys = [k for t in TARGETS for k in (t.name, *t.aliases)]
    assert len(keys) == len(set(keys))
    for t in TARGETS:
        if t.memory_gib:
            assert 0 < t.workspace_mib < t.memory_gib * 1024 / 4, t.name
        assert t.to_dict()["name"] == t.name


def test_cpu_target_has_no_tensorrt() -> None:
    assert not get_target("cpu").has_tensorrt
    assert all(t.has_tensorrt for t in TARGETS if t.name != "cpu")
