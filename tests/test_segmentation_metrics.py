"""Segmentation metrics: whole-set mIoU / accuracies against a direct numpy reference and hand counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from focalnet.segmentation.metrics import SegmentationMetrics, format_class_table

NUM_LABELS = 6  # 3: only in labels, 4: only in predictions, 5: in neither (outside ignored pixels)
IGNORE = 255


def _reference(pairs: list[tuple[np.ndarray, np.ndarray]], num_labels: int, ignore: int = IGNORE) -> dict:
    """The definition, spelled out: per-class pixel counts summed over every image, ignored pixels dropped."""
    inter, pred_area, label_area = np.zeros(num_labels), np.zeros(num_labels), np.zeros(num_labels)
    for pred, label in pairs:
        valid = label != ignore
        for c in range(num_labels):
            p = (pred == c) & valid
            t = (label == c) & valid
            inter[c] += np.sum(p & t)
            pred_area[c] += np.sum(p)
            label_area[c] += np.sum(t)
    union = pred_area + label_area - inter
    iou = [inter[c] / union[c] if union[c] > 0 else None for c in range(num_labels)]
    acc = [inter[c] / label_area[c] if label_area[c] > 0 else None for c in range(num_labels)]
    return {
        "miou": np.mean([v for v in iou if v is not None]),
        "pixel_accuracy": inter.sum() / label_area.sum(),
        "mean_accuracy": np.mean([v for v in acc if v is not None]),
        "per_class_iou": iou,
        "per_class_accuracy": acc,
        "totals": np.stack([inter, union, pred_area, label_area]),
    }


def _images(sizes=((5, 7), (8, 3), (4, 4), (6, 9)), seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Labels in {0, 1, 2, 3, 255}, predictions in {0, 1, 2, 4} where labelled and anything
    (absent class 5, out of range, the ignore index) where ignored."""
    rng = np.random.default_rng(seed)
    pairs = []
    for h, w in sizes:
        label = rng.choice([0, 1, 2, 3, IGNORE], size=(h, w), p=[0.3, 0.25, 0.2, 0.1, 0.15])
        pred = np.where(rng.random((h, w)) < 0.6, label, rng.choice([0, 1, 2, 4], size=(h, w)))
        ignored = label == IGNORE
        pred[ignored] = rng.choice([5, 3, 0, 200, IGNORE, -1], size=int(ignored.sum()))
        pred[label == 3] = rng.choice([0, 1, 2, 4], size=int((label == 3).sum()))  # class 3 never predicted
        label[0, 0], pred[0, 0] = IGNORE, 5
        pairs.append((pred, label))
    return pairs


def _metrics(pairs, num_labels: int = NUM_LABELS) -> SegmentationMetrics:
    metrics = SegmentationMetrics(num_labels)
    for pred, label in pairs:
        metrics.update(torch.from_numpy(pred), torch.from_numpy(label))
    return metrics


def _assert_results_equal(result: dict, expected: dict, tol: float = 1e-12) -> None:
    for key in ("miou", "pixel_accuracy", "mean_accuracy"):
        assert isinstance(result[key], float)
        assert result[key] == pytest.approx(expected[key], abs=tol, rel=0), key
    for key in ("per_class_iou", "per_class_accuracy"):
        assert len(result[key]) == len(expected[key])
        for c, (got, want) in enumerate(zip(result[key], expected[key], strict=True)):
            if want is None:
                assert got is None, (key, c)
            else:
                assert got == pytest.approx(want, abs=tol, rel=0), (key, c)


def test_equals_reference_over_a_set_of_differently_sized_images() -> None:
    pairs = _images()
    expected = _reference(pairs, NUM_LABELS)
    metrics = _metrics(pairs)
    result = metrics.compute()
    _assert_results_equal(result, expected)
    np.testing.assert_array_equal(metrics.totals.numpy(), expected["totals"])
    assert metrics.totals.dtype == torch.float64 and metrics.totals.shape == (4, NUM_LABELS)


def test_absent_predicted_only_and_labelled_only_classes() -> None:
    result = _metrics(_images()).compute()
    iou, acc = result["per_class_iou"], result["per_class_accuracy"]
    # class 5 occurs only in predictions at ignored pixels: absent, left out of both means
    assert iou[5] is None and acc[5] is None
    assert result["miou"] == pytest.approx(sum(iou[:5]) / 5, abs=1e-12)
    assert result["mean_accuracy"] == pytest.approx(sum(acc[:4]) / 4, abs=1e-12)
    assert all(v is not None and v > 0 for v in iou[:3])
    # class 4 only predicted: IoU 0 and counted in the mean, no accuracy
    assert iou[4] == 0.0 and acc[4] is None
    # class 3 only labelled: IoU 0 and accuracy 0, both counted
    assert iou[3] == 0.0 and acc[3] == 0.0


def test_hand_counted_example() -> None:
    metrics = SegmentationMetrics(3)
    # image 1: the ignored pixel's prediction (2) counts nowhere
    metrics.update(torch.tensor([[0, 1], [1, 2]]), torch.tensor([[0, 0], [1, 255]]))
    metrics.update(torch.tensor([[1, 1], [0, 1]]), torch.tensor([[1, 1], [0, 0]]))
    expected_totals = [[2, 3, 0], [4, 5, 0], [2, 5, 0], [4, 3, 0]]
    assert metrics.totals.tolist() == expected_totals
    result = metrics.compute()
    assert result["per_class_iou"] == [0.5, 0.6, None]
    assert result["per_class_accuracy"] == [0.5, 1.0, None]
    assert result["miou"] == pytest.approx(0.55, abs=1e-15)
    assert result["pixel_accuracy"] == pytest.approx(5 / 7, abs=1e-15)
    assert result["mean_accuracy"] == pytest.approx(0.75, abs=1e-15)


def test_image_by_image_equals_one_batch() -> None:
    pairs = _images(sizes=[(6, 5)] * 4, seed=1)
    one_by_one = _metrics(pairs)
    batched = SegmentationMetrics(NUM_LABELS)
    batched.update(torch.from_numpy(np.stack([p for p, _ in pairs])), torch.from_numpy(np.stack([t for _, t in pairs])))
    assert torch.equal(one_by_one.totals, batched.totals)
    _assert_results_equal(batched.compute(), _reference(pairs, NUM_LABELS))


def test_summed_totals_of_two_halves_equal_the_whole() -> None:
    pairs = _images()
    first, second = _metrics(pairs[:2]), _metrics(pairs[2:])
    first.totals = first.totals + second.totals  # what `processes.sum_tensor(metrics.totals)` returns
    assert torch.equal(first.totals, _metrics(pairs).totals)
    _assert_results_equal(first.compute(), _reference(pairs, NUM_LABELS))
    with pytest.raises(ValueError, match=r"\(4, 6\)"):
        first.totals = torch.zeros(4, 5)


def test_dtypes_devices_and_reset() -> None:
    pairs = _images()
    expected = _metrics(pairs).totals
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        metrics = SegmentationMetrics(NUM_LABELS)
        for pred, label in pairs:
            pred = np.where(label == IGNORE, 0, pred)  # uint8 cannot hold -1
            metrics.update(torch.from_numpy(pred.astype(np.uint8)).to(device), torch.from_numpy(label).to(device))
        assert metrics.totals.device.type == "cpu"
        assert torch.equal(metrics.totals, expected)
    metrics.reset()
    result = metrics.compute()
    assert all(math.isnan(result[k]) for k in ("miou", "pixel_accuracy", "mean_accuracy"))
    assert result["per_class_iou"] == [None] * NUM_LABELS


def test_custom_ignore_index() -> None:
    metrics = SegmentationMetrics(2, ignore_index=-1)
    metrics.update(torch.tensor([1, 0, 1, 7]), torch.tensor([1, 1, 0, -1]))
    assert metrics.totals.tolist() == [[0, 1], [2, 3], [1, 2], [1, 2]]


@pytest.mark.parametrize("bad", [6, 254, -1])
def test_out_of_range_labels_are_errors(bad: int) -> None:
    metrics = SegmentationMetrics(NUM_LABELS)
    with pytest.raises(ValueError, match=rf"labels contain values \[{bad}\]"):
        metrics.update(torch.tensor([[0, 1], [2, 3]]), torch.tensor([[0, 1], [bad, 255]]))
    assert metrics.totals.sum() == 0


@pytest.mark.parametrize("bad", [6, 255, -1])
def test_out_of_range_predictions_are_errors(bad: int) -> None:
    metrics = SegmentationMetrics(NUM_LABELS)
    with pytest.raises(ValueError, match=rf"predictions contain values \[{bad}\]"):
        metrics.update(torch.tensor([[0, bad], [2, 3]]), torch.tensor([[0, 1], [2, 3]]))


def test_shape_mismatch_and_float_inputs_are_errors() -> None:
    metrics = SegmentationMetrics(NUM_LABELS)
    with pytest.raises(ValueError, match=r"\(2, 3\) vs \(3, 2\)"):
        metrics.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError):
        metrics.update(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))


def test_equals_sklearn_confusion_matrix() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    pairs = _images(seed=2)
    valid = [label != IGNORE for _, label in pairs]
    y_true = np.concatenate([label[v] for (_, label), v in zip(pairs, valid, strict=True)])
    y_pred = np.concatenate([pred[v] for (pred, _), v in zip(pairs, valid, strict=True)])
    confusion = sklearn_metrics.confusion_matrix(y_true, y_pred, labels=list(range(NUM_LABELS)))
    inter, label_area, pred_area = np.diag(confusion), confusion.sum(1), confusion.sum(0)
    totals = _metrics(pairs).totals.numpy()
    np.testing.assert_array_equal(totals, np.stack([inter, pred_area + label_area - inter, pred_area, label_area]))


def test_format_class_table() -> None:
    names = ["wall", "building", "sky"]
    table = format_class_table(names, [0.123456, None, 1.0], [0.5, None, 0.98765])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].split() == ["class", "IoU", "%", "Acc", "%"]
    assert lines[1].split() == ["wall", "12.35", "50.00"]
    assert lines[2].split() == ["building", "-", "-"]
    assert lines[3].split() == ["sky", "100.00", "98.77"]
    assert len({len(line) for line in lines}) == 1  # aligned columns
    limited = format_class_table(names, [0.1, 0.2, 0.3], [0.4, 0.5, 0.6], limit=1).splitlines()
    assert [line.split()[0] for line in limited[:2]] == ["class", "wall"]
    assert limited[-1] == "... 2 more" and len(limited) == 3
    assert "more" not in format_class_table(names, [0.1] * 3, [0.1] * 3, limit=3)
    with pytest.raises(ValueError):
        format_class_table(names, [0.1], [0.1])
