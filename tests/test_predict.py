"""`focalnet predict` end to end on real photographs, with a damaged file among them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

import focalnet
from conftest import randomize_
from focalnet.cli import main

IMAGES = Path(__file__).parent / "data" / "images"


def _classifier(tmp_path: Path) -> focalnet.FocalNetForImageClassification:
    config = focalnet.FocalNetConfig(embed_dim=16, depths=[1, 1, 1, 1], id2label={0: "cat", 1: "cup", 2: "rocket"})
    model = randomize_(focalnet.FocalNetForImageClassification(config)).eval()
    model.save_pretrained(tmp_path / "model")
    return model


def test_predict_reports_and_skips_a_damaged_file(tmp_path, capsys) -> None:
    model = _classifier(tmp_path)
    folder = tmp_path / "photos"
    shutil.copytree(IMAGES, folder, ignore=shutil.ignore_patterns("*.md"))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    photos = sorted(p for p in folder.iterdir() if p.name != "broken.jpg")
    code = main(
        ["predict", str(folder), "--model", str(tmp_path / "model"), "--json", "--top-k", "2", "--batch-size", "2"]
    )
    captured = capsys.readouterr()
    assert code == 1, "a damaged image must make the run fail at the end"
    report = json.loads(captured.out)
    assert [Path(r["path"]).name for r in report["predictions"]] == [p.name for p in photos]
    assert [Path(f["path"]).name for f in report["failed"]] == ["broken.jpg"]
    assert "broken.jpg" in captured.err and "could not be read" in captured.err
    processor = focalnet.FocalNetImageProcessor()
    with torch.no_grad():
        probabilities = model(processor([str(p) for p in photos])["pixel_values"]).logits.softmax(-1)
    for row, result in zip(probabilities, report["predictions"], strict=True):
        scores, indices = row.topk(2)
        assert [g["index"] for g in result["top_k"]] == indices.tolist()
        assert [g["label"] for g in result["top_k"]] == [model.config.id2label[i] for i in indices.tolist()]
        assert torch.allclose(torch.tensor([g["score"] for g in result["top_k"]]), scores, atol=1e-6)


def test_predict_table_output(tmp_path, capsys) -> None:
    _classifier(tmp_path)
    image = next(IMAGES.glob("*.jpg"))
    assert main(["predict", str(image), "--model", str(tmp_path / "model"), "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image) and len(lines) == 4
    assert {line.split()[-1] for line in lines[1:]} == {"cat", "cup", "rocket"}


def test_predict_with_nothing_to_read(tmp_path, capsys) -> None:
    _classifier(tmp_path)
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), "--model", str(tmp_path / "model")]) == 2
    assert "no image files found" in capsys.readouterr().err
