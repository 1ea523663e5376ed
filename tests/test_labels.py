"""ImageNet label lists shipped as package data (focalnet.labels)."""

from __future__ import annotations

import pytest

from focalnet import labels

TEDDY = 850  # ImageNet-1K class n04399382, absent from the fall11 ImageNet-22K release


@pytest.mark.parametrize("num_classes", [1000, 21842])
def test_sizes_and_id2label(num_classes: int) -> None:
    names = labels.imagenet_labels(num_classes)
    synsets = labels.imagenet_synsets(num_classes)
    assert len(names) == len(synsets) == num_classes
    assert len(set(synsets)) == num_classes
    assert all(s.startswith("n") and len(s) == 9 and s[1:].isdigit() for s in synsets)
    assert all(name and name == name.strip() for name in names)
    id2label = labels.imagenet_id2label(num_classes)
    assert list(id2label) == list(range(num_classes))
    assert all(type(k) is int for k in id2label)
    assert list(id2label.values()) == names


@pytest.mark.parametrize("num_classes", [1000, 21842])
def test_known_entries(num_classes: int) -> None:
    names = labels.imagenet_labels(num_classes)
    synsets = labels.imagenet_synsets(num_classes)
    assert (synsets[0], names[0]) == ("n01440764", "tench, Tinca tinca")
    assert names[1] == "goldfish, Carassius auratus"
    assert (synsets[281], names[281]) == ("n02123045", "tabby, tabby cat")
    assert (synsets[TEDDY], names[TEDDY]) == ("n04399382", "teddy, teddy bear")
    assert (synsets[999], names[999]) == ("n15075141", "toilet tissue, toilet paper, bathroom tissue")


def test_22k_starts_with_1k_without_gap_or_duplicate() -> None:
    # The 21842 list holds the 1K classes at 0..999 in 1K order, including class 850 as
    # the placeholder for the output that no 22K training label used.
    in1k, in22k = labels.imagenet_synsets(1000), labels.imagenet_synsets(21842)
    assert in22k[:1000] == in1k
    assert labels.imagenet_labels(21842)[:1000] == labels.imagenet_labels(1000)
    assert in22k[1000:] == sorted(in22k[1000:])
    assert labels.IN22K_UNTRAINED_INDEX == TEDDY


def test_in22k_to_in1k_indices() -> None:
    mapping = labels.in22k_to_in1k_indices()
    in1k, in22k = labels.imagenet_synsets(1000), labels.imagenet_synsets(21842)
    assert len(mapping) == 1000
    assert [i for i, j in enumerate(mapping) if j == -1] == [TEDDY]
    for i, j in enumerate(mapping):
        if j != -1:
            assert in22k[j] == in1k[i]
    assert mapping == [-1 if i == TEDDY else i for i in range(1000)]


@pytest.mark.parametrize("bad", [0, 21841, 21843, 11821, -1])
def test_unsupported_count_raises(bad: int) -> None:
    for fn in (labels.imagenet_labels, labels.imagenet_synsets, labels.imagenet_id2label):
        with pytest.raises(ValueError, match=r"1000 or 21842"):
            fn(bad)


def test_results_are_fresh_copies() -> None:
    names = labels.imagenet_labels(1000)
    names[0] = "changed"
    assert labels.imagenet_labels(1000)[0] == "tench, Tinca tinca"


def test_matches_timm_imagenet_info() -> None:
    import timm.data as timm_data

    for subset, num_classes in (("imagenet-1k", 1000), ("imagenet-22k-ms", 21842)):
        info = timm_data.ImageNetInfo(subset)
        assert labels.imagenet_synsets(num_classes) == info.label_names()
        assert labels.imagenet_labels(num_classes) == info.label_descriptions()
    # The 21841 fall11 classes are the 22K list without index 850, whose synset fall11 lacks.
    fall11 = timm_data.ImageNetInfo("imagenet-22k").label_names()
    in22k = labels.imagenet_synsets(21842)
    assert in22k[TEDDY] not in set(fall11)
    assert sorted(in22k[:TEDDY] + in22k[TEDDY + 1 :]) == fall11
