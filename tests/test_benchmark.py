"""The benchmark harness on a tiny config: structure of the report, ratios against the peers (no timings judged)."""

from __future__ import annotations

import json

import pytest
import torch

import focalnet
from focalnet.benchmark import PEERS, BenchmarkSettings, run_benchmark, without_fused_blocks
from focalnet.cli import main

REPORT_MODES = ["eager", "plain", "bf16", "channels-last", "int8", "onnxruntime", "train"]
SETTINGS = BenchmarkSettings(batch_sizes=(1, 2), repeats=1, warmup=1, train_batch_size=2, image_size=64)


@pytest.fixture(scope="module")
def report():
    config = focalnet.FocalNetConfig(embed_dim=16, depths=[1, 1, 1, 1], num_labels=10)
    return run_benchmark({"tiny": config}, REPORT_MODES, SETTINGS)


def _result(report, mode):
    (result,) = [r for r in report.results if r.mode == mode]
    assert result.error is None, result.error
    return result


def test_peers_have_our_weights(report) -> None:
    for result in (_result(report, "eager"), _result(report, "train")):
        assert set(result.parity) == set(PEERS)
        assert max(result.parity.values()) < 1e-5


def test_inference_metrics_and_ratios(report) -> None:
    result = _result(report, "eager")
    assert result.models == ["ours", *PEERS]
    found = {(m.model, m.metric, m.batch_size): m for m in result.measurements}
    for model in result.models:
        assert {("latency_ms", 1), ("throughput_img_s", 2), ("peak_memory_mib", 1)} <= {
            (metric, batch) for (name, metric, batch) in found if name == model
        }
    ours, transformers, timm = (found[(name, "throughput_img_s", 2)] for name in result.models)
    assert len(ours.runs) == 1 and ours.median == ours.runs[0]
    assert ours.ratio_to_peers == pytest.approx(
        {"transformers": ours.median / transformers.median, "timm": ours.median / timm.median}
    )
    assert ours.best_peer == max(PEERS, key=lambda peer: found[(peer, "throughput_img_s", 2)].median)
    latency = found[("ours", "latency_ms", 1)]
    assert latency.best_peer == min(PEERS, key=lambda peer: found[(peer, "latency_ms", 1)].median)
    assert transformers.ratio_to_peers == {} and transformers.best_peer is None


def test_bf16_is_checked_against_our_fp32_logits(report) -> None:
    result = _result(report, "bf16")
    assert set(result.accuracy) == {"ours", *PEERS}
    for check in result.accuracy.values():
        assert 0 < check["max_abs_err"] < 0.1 and check["cosine"] > 0.99


def test_training_with_and_without_checkpointing(report) -> None:
    result = _result(report, "train")
    assert result.models == ["ours", "ours+checkpointing", *PEERS]
    step = {m.model: m for m in result.measurements if m.metric == "train_step_ms"}
    assert set(step) == set(result.models) and all(m.batch_size == 2 for m in step.values())
    assert step["ours+checkpointing"].best_peer in PEERS
    held = {m.model for m in result.measurements if m.metric == "activation_memory_mib"}
    assert held == set(result.models)


def test_channels_last_runs_every_model_on_channels_last_pixels(report) -> None:
    result = _result(report, "channels-last")
    assert set(result.accuracy) == {"ours", *PEERS}
    assert all(check["max_abs_err"] < 1e-4 for check in result.accuracy.values())
    assert {m.model for m in result.measurements if m.metric == "throughput_img_s"} == {"ours", *PEERS}


def test_plain_mode_runs_ours_without_the_fused_blocks(report, fuse_tiny_blocks, fused_calls) -> None:
    result = _result(report, "plain")
    assert {m.model for m in result.measurements if m.metric == "throughput_img_s"} == {"ours", *PEERS}
    assert result.accuracy["ours"]["max_abs_err"] < 1e-4
    calls = fused_calls
    model = focalnet.FocalNetModel(focalnet.FocalNetConfig(embed_dim=8, depths=[1, 1], hidden_sizes=[8, 16])).eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        without_fused_blocks(model)(pixels)
        assert not calls
        model(pixels)
        assert calls, "the eager model should have taken the fused path"


def test_int8_runs_ours_quantised_against_fp32_peers(report) -> None:
    result = _result(report, "int8")
    assert result.models == ["ours-int8", *PEERS]
    assert result.accuracy["ours-int8"]["cosine"] > 0.99


def test_onnxruntime_runs_our_exported_file_against_the_eager_models(report) -> None:
    result = _result(report, "onnxruntime")
    assert result.models == ["ours-onnxruntime", "ours", *PEERS]
    assert result.accuracy["ours-onnxruntime"]["max_abs_err"] < 1e-4
    rows = [m for m in result.measurements if m.model == "ours-onnxruntime" and m.metric == "throughput_img_s"]
    assert rows and rows[0].ratio_to_best_peer > 0


def test_table_and_json(report, tmp_path) -> None:
    table = report.table()
    assert "== tiny | eager" in table and "throughput img/s (higher is better)" in table
    assert "ratios ours / best peer" in table
    report.write_json(tmp_path / "out.json")
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["machine"]["torch_threads"] >= 1 and data["machine"]["versions"]["torch"]
    assert data["settings"]["repeats"] == 1
    assert [r["mode"] for r in data["results"]] == REPORT_MODES
    assert data["results"][0]["measurements"][0]["runs"]


def test_cli_benchmark(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    argv = ["benchmark", "--presets", "focalnet-tiny", "--modes", "eager", "--batch-sizes", "1"]
    assert main([*argv, "--repeats", "1", "--warmup", "1", "--image-size", "32", "--json", str(out)]) == 0
    assert "== focalnet-tiny | eager | ours, transformers, timm" in capsys.readouterr().out
    assert json.loads(out.read_text())["results"][0]["name"] == "focalnet-tiny"
