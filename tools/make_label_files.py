"""Write FocalNet's ImageNet label files from the ImageNet data files that timm ships.

Reads, from timm's ``timm/data/_info`` folder: ``imagenet_synsets.txt`` (ImageNet-1K
order), ``imagenet22k_ms_synsets.txt`` (Microsoft's 21842-output order of the 22K FocalNet
heads), ``imagenet22k_synsets.txt`` (the 21841 fall11 classes, used only for the checks)
and ``imagenet_synset_to_lemma.txt`` (synset -> WordNet lemma string).

Writes ``imagenet1k_labels.txt`` and ``imagenet22k_labels.txt``, one ``synset<TAB>name``
line per output index, into ``src/focalnet/assets`` (or ``--out-dir``). It also checks the
facts that ``focalnet.labels`` documents, so a changed source fails loudly.

Usage: python tools/make_label_files.py [--info-dir DIR] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEDDY_INDEX = 850  # ImageNet-1K class n04399382, absent from the fall11 22K release


def default_info_dir() -> Path:
    """timm's ``data/_info`` folder, located without importing timm."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("timm is not installed; pass --info-dir")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def read_lemmas(path: Path) -> dict[str, str]:
    lemmas = {}
    for line in read_lines(path):
        synset, lemma = line.split("\t")
        lemmas[synset] = lemma
    return lemmas


def check(in1k: list[str], in22k_ms: list[str], fall11: list[str]) -> None:
    """Assert the structure of the two label spaces (see ``focalnet.labels``)."""
    assert len(in1k) == len(set(in1k)) == 1000
    assert len(in22k_ms) == len(set(in22k_ms)) == 21842
    assert len(fall11) == len(set(fall11)) == 21841
    assert in22k_ms[:1000] == in1k, "the 22K order must start with the 1K classes in 1K order"
    teddy = in1k[TEDDY_INDEX]
    assert teddy not in set(fall11), f"{teddy} is expected to be missing from fall11"
    rest = in22k_ms[:TEDDY_INDEX] + in22k_ms[TEDDY_INDEX + 1 :]
    assert sorted(rest) == sorted(fall11), "the other 21841 entries must be the fall11 classes"


def write(path: Path, synsets: list[str], lemmas: dict[str, str]) -> None:
    lines = []
    for synset in synsets:
        name = lemmas[synset]
        assert name and name == name.strip() and "\t" not in name
        lines.append(f"{synset}\t{name}\n")
    path.write_text("".join(lines), encoding="utf-8", newline="\n")
    print(f"wrote {path} ({len(lines)} lines, {path.stat().st_size} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--info-dir", type=Path, default=None, help="timm's data/_info folder")
    parser.add_argument("--out-dir", type=Path, default=REPO / "src" / "focalnet" / "assets")
    args = parser.parse_args()
    info = args.info_dir or default_info_dir()

    in1k = read_lines(info / "imagenet_synsets.txt")
    in22k_ms = read_lines(info / "imagenet22k_ms_synsets.txt")
    check(in1k, in22k_ms, read_lines(info / "imagenet22k_synsets.txt"))
    lemmas = read_lemmas(info / "imagenet_synset_to_lemma.txt")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    write(args.out_dir / "imagenet1k_labels.txt", in1k, lemmas)
    write(args.out_dir / "imagenet22k_labels.txt", in22k_ms, lemmas)


if __name__ == "__main__":
    main()
