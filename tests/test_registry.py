"""The generic name -> entry registry behind backbones, architectures, optimisers and triplet features."""

import pytest

from pan_model.registry import Registry


def test_lookup_order_and_membership():
    registry: Registry[int] = Registry("widget")
    registry.add("b", 2)

    @registry.register("a")
    def entry():
        return 1

    assert entry() == 1  # the decorator returns what it registers
    assert registry.get("b") == 2 and registry.get("a") is entry
    assert tuple(registry) == ("b", "a")  # registration order, not sorted
    assert "a" in registry and "c" not in registry


def test_unknown_name_lists_the_known_ones():
    registry: Registry[int] = Registry("widget")
    registry.add("small", 1)
    registry.add("large", 2)
    with pytest.raises(ValueError, match=r"^unknown widget 'huge'; choose one of \('small', 'large'\)$"):
        registry.get("huge")
    worded = Registry("widget", unknown="make: name must be one of {choices}, got {name!r}")
    worded.add("small", 1)
    with pytest.raises(ValueError, match=r"^make: name must be one of \('small',\), got 'huge'$"):
        worded.get("huge")


def test_a_name_is_registered_once():
    registry: Registry[int] = Registry("widget")
    registry.add("a", 1)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        registry.add("a", 2)
    assert registry.get("a") == 1
