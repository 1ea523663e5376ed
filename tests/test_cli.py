"""The `focalnet` command line, run as a user would (in-process through its `main`)."""

from __future__ import annotations

import io
import json
import sys

import pytest

from focalnet.cli import main


def test_presets_json(capsys) -> None:
    assert main(["presets", "--json", "focalnet-tiny", "focalnet-base-iso"]) == 0
    rows = json.loads(capsys.readouterr().out)
    tiny, iso = rows
    assert tiny["name"] == "focalnet-tiny" and tiny["params"] == 28_427_116
    assert 4.3 < tiny["gmacs"] < 4.5  # the paper's 4.4 GFLOPs (multiply-adds)
    assert tiny["feature_shapes"] == [[96, 56, 56], [192, 28, 28], [384, 14, 14], [768, 7, 7]]
    assert iso["feature_shapes"] == [[768, 14, 14]] and iso["num_labels"] == 1000


def test_presets_table_lists_every_preset(capsys) -> None:
    assert main(["presets", "focalnet-tiny-lrf"]) == 0
    out = capsys.readouterr().out
    assert "focalnet-tiny-lrf" in out and "28,647,928" in out


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [False, True])
def test_presets_draw_a_progress_bar_only_on_a_terminal(capsys, monkeypatch, terminal: bool) -> None:
    stderr = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["presets", "focalnet-tiny", "focalnet-small"]) == 0
    assert ("counting" in stderr.getvalue()) == terminal
    assert "counting" not in capsys.readouterr().out


def test_unknown_preset_is_an_error(capsys) -> None:
    try:
        main(["presets", "focalnet-gigantic"])
    except SystemExit as exit_:
        assert "unknown preset" in str(exit_.code)
    else:
        raise AssertionError("no error for an unknown preset")


def test_demo_runs_on_the_bundled_photo(capsys) -> None:
    assert main(["demo", "--preset", "focalnet-tiny-iso"]) == 0
    out = capsys.readouterr().out
    assert "chelsea.jpg -> pixel_values (1, 3, 224, 224)" in out
    assert "after stage1" in out and "(1, 192, 14, 14)" in out
    assert "modulators: 12 blocks" in out


def test_demo_reports_unreadable_image(tmp_path, capsys) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert main(["demo", "--image", str(broken)]) == 2
    assert "cannot read" in capsys.readouterr().err
