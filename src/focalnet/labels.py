"""ImageNet class names for FocalNet classifier heads, read lazily from package data.

Two label spaces ship with the package, one ``synset<TAB>name`` line per output index;
the names are the WordNet lemma strings that Hugging Face ``config.json`` files use as
``id2label`` (index 0 "tench, Tinca tinca", index 281 "tabby, tabby cat"):

* 1000 outputs: ImageNet-1K in the standard order (synsets n01440764 ... n15075141).
* 21842 outputs: Microsoft's order of the released 22K FocalNet heads (timm's
  "imagenet-22k-ms"): the 1000 ImageNet-1K classes in 1K order, then the other 20842
  ImageNet-22K (fall11) classes in synset order.

The class-850 quirk: ImageNet-1K class 850, n04399382 "teddy, teddy bear", is not one of
the 21841 fall11 classes. Microsoft's label map (``labelmap_22k_reorder.txt`` in
microsoft/FocalNet) gives the 21841 fall11 synsets the indices 0..849 and 851..21841, so a
22K head has 21842 outputs and output 850 is a slot that no training label used. The
21842-entry list here, like timm's, names that slot n04399382 "teddy, teddy bear", so its
first 1000 entries equal the 1K list exactly; there is no duplicate and no other gap.
``in22k_to_in1k_indices`` therefore gives -1 for class 850.

Regenerate the files with ``tools/make_label_files.py``.
"""

from __future__ import annotations

import functools
from importlib import resources

IN22K_UNTRAINED_INDEX = 850
"""The 22K-head output (and 1K class, n04399382) that has no ImageNet-22K training label."""

_FILES = {1000: "imagenet1k_labels.txt", 21842: "imagenet22k_labels.txt"}


@functools.lru_cache
def _read(num_classes: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(synsets, names) for a supported head size, read once from package data."""
    if num_classes not in _FILES:
        supported = " or ".join(str(n) for n in _FILES)
        raise ValueError(f"no ImageNet label list for {num_classes!r} classes; supported: {supported}")
    text = resources.files("focalnet").joinpath("assets", _FILES[num_classes]).read_text(encoding="utf-8")
    synsets, names = zip(*(line.split("\t") for line in text.splitlines()), strict=True)
    return synsets, names


def imagenet_labels(num_classes: int) -> list[str]:
    """Class names for a head with 1000 (ImageNet-1K) or 21842 (ImageNet-22K) outputs."""
    return list(_read(num_classes)[1])


def imagenet_synsets(num_classes: int) -> list[str]:
    """WordNet synset ids (e.g. "n01440764") for a head with 1000 or 21842 outputs."""
    return list(_read(num_classes)[0])


def imagenet_id2label(num_classes: int) -> dict[int, str]:
    """``{index: name}`` for a config's ``id2label``, for 1000 or 21842 outputs."""
    return dict(enumerate(_read(num_classes)[1]))


def in22k_to_in1k_indices() -> list[int]:
    """For each ImageNet-1K class, its output index in a 21842-output 22K head, or -1 if none.

    Select these rows of a 22K classifier to make a 1K one. Class 850 (teddy bear) gets -1:
    no 22K training label maps to output 850 (see the module docstring).
    """
    position = {synset: i for i, synset in enumerate(_read(21842)[0])}
    return [-1 if position[synset] == IN22K_UNTRAINED_INDEX else position[synset] for synset in _read(1000)[0]]
