"""`focalnet serve` as clients meet it: a real server in a subprocess on a loopback port, real HTTP.
Every route for every kind of model, answers equal to `focalnet predict`, dynamic batching, bad
input, limits, keys, CORS, a failing batch, queue overflow and timeout, and a drain on SIGTERM."""

from __future__ import annotations

import base64
import io
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from focalnet.cli import main
from servers import (
    LABELS,
    PHOTOS,
    Server,
    save_classifier,
    save_detector,
    save_simmim,
    save_upernet,
    serve_command,
    start,
)

pytest.importorskip("fastapi")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def png(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def decode_png(text: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(base64.b64decode(text))))


def post_image(url: str, data: bytes, route: str = "/predict", content_type: str = "image/jpeg", **kwargs):
    """POST `data` as the body; `headers` add to the Content-Type."""
    headers = {"content-type": content_type, **kwargs.pop("headers", {})}
    return httpx.post(f"{url}{route}", content=data, headers=headers, timeout=60, **kwargs)


def cli_json(args: list[str], capsys) -> dict:
    capsys.readouterr()
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """One saved model of each kind the library trains, and an ONNX export of the classifier."""
    from focalnet import FocalNetForImageClassification
    from focalnet.export import export_onnx

    root = tmp_path_factory.mktemp("models")
    saved = {
        "classifier": save_classifier(root / "classifier"),
        "simmim": save_simmim(root / "simmim"),
        "faster_rcnn": save_detector(root / "faster", "faster_rcnn"),
        "mask_rcnn": save_detector(root / "mask", "mask_rcnn"),
        "upernet": save_upernet(root / "upernet"),
    }
    classifier = FocalNetForImageClassification.from_pretrained(saved["classifier"])
    from focalnet.image_processing import FocalNetImageProcessor

    processor = FocalNetImageProcessor.from_pretrained(saved["classifier"])
    saved["onnx"] = export_onnx(classifier, root / "classifier.onnx", processor=processor)
    return saved


@pytest.fixture(scope="module")
def classifier_server(models, tmp_path_factory):
    server = start(
        serve_command(models["classifier"], "--max-wait-ms", "50", "--max-images", "4", "--max-upload-mb", "1"),
        tmp_path_factory.mktemp("logs") / "classifier.log",
    )
    yield server
    assert server.stop() == 0, server.output()


TASKS = {
    "classifier": "image-classification",
    "onnx": "image-classification",
    "simmim": "masked-image-modeling",
    "faster_rcnn": "object-detection",
    "mask_rcnn": "object-detection",
    "upernet": "image-segmentation",
}


def test_every_route_answers_for_every_kind_of_model(models, classifier_server, tmp_path, capsys) -> None:
    """Health, metadata, metrics, OpenAPI, /predict and /visualize for each model; the answers are
    what `focalnet predict` gives for the same files."""
    servers = {"classifier": classifier_server}
    try:
        for kind in TASKS:
            if kind not in servers:
                source = ["--onnx", str(models["onnx"])] if kind == "onnx" else [str(models[kind])]
                command = serve_command(None, *source, "--threshold", "0.2")
                servers[kind] = Server(command, tmp_path / f"{kind}.log")
        for kind, server in servers.items():
            server.wait_ready()
            check_routes(server.url, kind)
            answers = [post_image(server.url, path.read_bytes()) for path in PHOTOS]
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
            check_against_predict(kind, models, [a.json() for a in answers], tmp_path, capsys)
            picture = post_image(server.url, PHOTOS[0].read_bytes(), "/visualize")
            if kind == "onnx":
                assert picture.status_code == 501 and "ONNX" in picture.json()["error"]["message"]
            else:
                assert picture.status_code == 200 and picture.headers["content-type"] == "image/png", picture.text
                assert Image.open(io.BytesIO(picture.content)).size[0] > 64
    finally:
        for kind, server in servers.items():
            if kind != "classifier":
                assert server.stop() == 0, server.output()


def check_routes(url: str, kind: str) -> None:
    assert httpx.get(f"{url}/health/live").json() == {"status": "live"}
    assert httpx.get(f"{url}/health/ready").json() == {"status": "ready"}
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}
    info = httpx.get(f"{url}/model").json()
    assert info["task"] == TASKS[kind] and info["library_version"] and info["dtype"] == "float32"
    name = info["name"]
    assert httpx.get(f"{url}/v2/models/{name}").json()["parameters"]["task"] == TASKS[kind]
    assert httpx.get(f"{url}/v2/models/{name}/ready").json() == {"name": name, "ready": True}
    assert httpx.get(f"{url}/v2/models/other").status_code == 404
    assert httpx.get(f"{url}/v2").json()["name"] == "focalnet"
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    assert {"/predict", "/visualize", "/model", "/metrics", "/health/ready"} <= paths.keys()
    assert "multipart/form-data" in paths["/predict"]["post"]["requestBody"]["content"]
    assert "focalnet_requests_total" in httpx.get(f"{url}/metrics").text


def check_against_predict(kind: str, models: dict, answers: list, tmp_path: Path, capsys) -> None:
    photos = [str(path) for path in PHOTOS]
    if kind in ("classifier", "onnx"):
        source = ["--onnx", str(models["onnx"])] if kind == "onnx" else ["--model", str(models["classifier"])]
        expected = cli_json(["predict", *photos, *source, "--json", "--top-k", "5"], capsys)["predictions"]
        for answer, reference in zip(answers, expected, strict=True):
            assert [a["label"] for a in answer] == [r["label"] for r in reference["top_k"]]
            assert all(label in LABELS.values() for label in (a["label"] for a in answer))
            for got, want in zip(answer, reference["top_k"], strict=True):
                assert got["score"] == pytest.approx(want["score"], abs=1e-5)
    elif kind in ("faster_rcnn", "mask_rcnn"):
        out = tmp_path / kind
        args = ["predict", *photos, "--model", str(models[kind]), "--score-threshold", "0.2", "--output-dir", str(out)]
        assert main(args) == 0
        expected = json.loads((out / "detections.json").read_text())["predictions"]
        assert sum(len(answer) for answer in answers) > 0, "nothing to compare"
        for answer, reference in zip(answers, expected, strict=True):
            assert [a["label"] for a in answer] == [r["label"] for r in reference["detections"]]
            for got, want in zip(answer, reference["detections"], strict=True):
                assert got["score"] == pytest.approx(want["score"], abs=1e-5)
                box = [got["box"][key] for key in ("xmin", "ymin", "xmax", "ymax")]
                assert box == [int(value) for value in want["box"]]  # the pipeline's integer pixels
                assert ("mask" in got) == (kind == "mask_rcnn")
    elif kind == "upernet":
        out = tmp_path / "segmented"
        assert main(["predict", *photos, "--model", str(models["upernet"]), "--output-dir", str(out)]) == 0
        names = {0: "background", 1: "circle", 2: "square", 3: "triangle"}
        for answer, photo in zip(answers, PHOTOS, strict=True):
            labels = np.array(Image.open(out / f"{photo.stem}_labels.png"))
            assert [segment["label"] for segment in answer] == [names[v] for v in np.unique(labels)]
            for segment in answer:
                assert segment["score"] is None
                label = next(k for k, v in names.items() if v == segment["label"])
                np.testing.assert_array_equal(decode_png(segment["mask"]), (labels == label) * 255)
    else:  # SimMIM: the loss of each image as the model computes it for that image alone
        from focalnet import FocalNetForMaskedImageModeling
        from focalnet.image_processing import FocalNetImageProcessor
        from focalnet.visualization import seeded_mask

        model = FocalNetForMaskedImageModeling.from_pretrained(models["simmim"])
        processor = FocalNetImageProcessor.from_pretrained(models["simmim"])
        for answer, photo in zip(answers, PHOTOS, strict=True):
            pixels = processor(str(photo))["pixel_values"]
            mask = seeded_mask(model.config, (64, 64), 0.6, seed=0)[None]
            with torch.no_grad():
                expected = model(pixels, bool_masked_pos=mask).loss.item()
            assert answer["loss"] == pytest.approx(expected, abs=1e-5)
            hidden = decode_png(answer["mask"])
            assert hidden.shape == (64, 64) and set(np.unique(hidden)) == {0, 255}
            assert decode_png(answer["composite"]).shape == (64, 64, 3)


# ------------------------------------------------------------------------------------------------
def distinct_images(count: int) -> list[bytes]:
    """`count` different JPEGs: crops of the bundled photos at several offsets and sizes."""
    images = []
    for index in range(count):
        with Image.open(PHOTOS[index % len(PHOTOS)]) as photo:
            side = 96 + 8 * (index % 5)
            left, top = 3 * index % 60, 5 * index % 50
            images.append(png(photo.convert("RGB").crop((left, top, left + side, top + side)), "JPEG", quality=90))
    return images


def test_concurrent_requests_are_batched_and_answered_as_alone(classifier_server) -> None:
    url = classifier_server.url
    images = distinct_images(32)
    alone = [post_image(url, data).json() for data in images]
    before = batch_histogram(url)
    barrier = threading.Barrier(32)

    def client(data: bytes) -> list[dict]:
        barrier.wait()
        return post_image(url, data).json()

    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(client, images))
    after = batch_histogram(url)
    batches = after["count"] - before["count"]
    assert after["sum"] - before["sum"] == 32 and batches < 32, (before, after)  # mean batch size above 1
    for single, batched in zip(alone, together, strict=True):
        assert [a["label"] for a in single] == [b["label"] for b in batched]
        assert np.allclose([a["score"] for a in single], [b["score"] for b in batched], atol=1e-5, rtol=0)


def metric(url: str, name: str) -> float:
    """The value of a metric (with its labels, as /metrics writes them) in the server's /metrics; 0 if absent."""
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return next((float(line.split()[1]) for line in lines if line.split()[0] == name), 0.0)


def batch_histogram(url: str) -> dict[str, float]:
    """The count and sum of the batch-size histogram (batches, and images in them)."""
    return {key: metric(url, f"focalnet_batch_size_{key}") for key in ("count", "sum")}


# ------------------------------------------------------------------------------------------------
def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says `width` x `height` (a decompression bomb's header), with 1x1 pixel data."""
    import struct
    import zlib

    data = bytearray(png(Image.new("RGB", (1, 1))))
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


def odd_images(directory: Path) -> dict[str, Path]:
    """Files in the modes and shapes users send: greyscale, RGBA, palette, 16-bit, CMYK, animated, EXIF-rotated."""
    directory.mkdir()
    with Image.open(PHOTOS[1]) as photo:
        base = photo.convert("RGB")
    rotated = base.copy()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    frames = [base, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    files = {
        "grey.png": lambda path: base.convert("L").save(path),
        "rgba.png": lambda path: base.convert("RGBA").save(path),
        "palette.png": lambda path: base.convert("P", palette=Image.Palette.ADAPTIVE).save(path),
        "sixteen.png": lambda path: Image.fromarray(np.array(base.convert("L"), np.uint16) * 257).save(path),
        "cmyk.jpg": lambda path: base.convert("CMYK").save(path, "JPEG"),
        "animated.gif": lambda path: frames[0].save(path, save_all=True, append_images=frames[1:], duration=100),
        "rotated.jpg": lambda path: rotated.save(path, "JPEG", exif=exif),
    }
    paths = {}
    for name, write in files.items():
        write(directory / name)
        paths[name] = directory / name
    return paths


def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(models, classifier_server, tmp_path, capsys) -> None:
    url, good = classifier_server.url, PHOTOS[0].read_bytes()
    truncated = good[: len(good) // 2]
    bomb = "image/png"
    cases = [
        (post_image(url, b""), 400, "empty_body", "empty"),
        (post_image(url, b"certainly not an image"), 400, "not_an_image", "not an image"),
        (post_image(url, truncated), 400, "not_an_image", "truncated"),
        (post_image(url, good, content_type="text/plain"), 415, "unsupported_media_type", "Content-Type"),
        (post_image(url, b"x" * (1024 * 1024 + 1)), 413, "payload_too_large", "1 MB"),
        (post_image(url, iter([b"x" * 65536] * 20)), 413, "payload_too_large", "1 MB"),  # chunked: counted
        (post_image(url, png_header_claiming(8000, 8000), content_type=bomb), 413, "too_many_pixels", "64,000,000"),
        (post_image(url, png_header_claiming(10000, 10000), content_type=bomb), 413, "too_many_pixels", "large"),
        (post_image(url, png_header_claiming(20000, 20000), content_type=bomb), 413, "too_many_pixels", "large"),
        (httpx.post(f"{url}/predict", files=[("image", ("a.jpg", good))] * 5), 413, "too_many_images", "at most 4"),
        (post_image(url, good, params={"top_k": 0}), 422, "invalid_parameter", "top_k"),
        (post_image(url, good, params={"threshold": "high"}), 422, "invalid_parameter", "threshold"),
        (httpx.post(f"{url}/predict", json={"inputs": "%%%"}), 400, "bad_base64", "base64"),
        (httpx.post(f"{url}/predict", files=[("photo", ("a.jpg", good))]), 400, "no_image", '"image"'),
        (httpx.get(f"{url}/nowhere"), 404, "not_found", "Not Found"),
    ]
    for response, status, code, words in cases:
        assert response.status_code == status, (code, response.text)
        assert response.json()["error"]["code"] == code, response.text
        assert words in response.json()["error"]["message"], response.text
        assert post_image(url, good).status_code == 200  # and the next good request succeeds

    # the kinds of image users send are read as `focalnet predict` reads them
    odd = odd_images(tmp_path / "odd")
    expected = cli_json(["predict", *map(str, odd.values()), "--model", str(models["classifier"]), "--json"], capsys)
    for path, reference in zip(odd.values(), expected["predictions"], strict=True):
        answer = post_image(url, path.read_bytes(), content_type="application/octet-stream")
        assert answer.status_code == 200, (path.name, answer.text)
        assert answer.json()[0]["label"] == reference["top_k"][0]["label"], path.name
        assert answer.json()[0]["score"] == pytest.approx(reference["top_k"][0]["score"], abs=1e-5), path.name
    as_json = httpx.post(
        f"{url}/predict", json={"inputs": [base64.b64encode(good).decode()], "parameters": {"top_k": 2}}
    )
    assert (
        as_json.status_code == 200 and len(as_json.json()) == 1 and len(as_json.json()[0]) == 2
    )  # a list in, a list out


def test_memory_stays_flat_over_a_thousand_mixed_requests(classifier_server) -> None:
    url, local = classifier_server.url, threading.local()
    jpeg, photo = distinct_images(1)[0], PHOTOS[0].read_bytes()
    kinds = [
        ("content", jpeg, {}),
        ("content", b"broken", {}),
        ("content", jpeg, {"top_k": "x"}),
        ("files", [("image", ("a.jpg", photo))] * 2, {}),
        ("content", jpeg, {"top_k": 2}),
    ]
    oversized = ("content", b"x" * (1024 * 1024 + 10), {})  # every 50th: a megabyte each is slow to send

    def request(index: int) -> int:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=60)
        kind, body, params = oversized if index % 50 == 0 else kinds[index % len(kinds)]
        return local.client.post(f"{url}/predict", params=params, **{kind: body}).status_code

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(request, range(100)))
        early = classifier_server.resident_mb()
        statuses = list(pool.map(request, range(100, 1000)))
    late = classifier_server.resident_mb()
    assert set(statuses) == {200, 400, 413, 422}
    assert late - early <= 50, f"resident memory grew from {early:.0f} MB to {late:.0f} MB"


# ------------------------------------------------------------------------------------------------
# servers of a model made slow, or made to fail on a marked (all black) image
SCRIPTED_SERVER = """
import json, sys, time
import focalnet
from focalnet.serving.server import serve

class Model(focalnet.FocalNetForImageClassification):
    delay = 0.0

    def forward(self, pixel_values, *args, **kwargs):
        time.sleep(self.delay)
        if (pixel_values.flatten(1).amax(1) < -1.5).any():
            raise ValueError("a marked (all black) image")
        return super().forward(pixel_values, *args, **kwargs)

options = json.loads(sys.argv[3])
Model.delay = options.pop("delay", 0.0)
sys.exit(serve(Model.from_pretrained(sys.argv[1]), port=int(sys.argv[2]), **options))
"""


def scripted_server(models: dict, tmp_path: Path, **options) -> Server:
    script = tmp_path / "scripted_server.py"
    script.write_text(SCRIPTED_SERVER)
    command = [sys.executable, str(script), str(models["classifier"]), "{port}", json.dumps(options)]
    return Server(command, tmp_path / "scripted.log")


BLACK = png(Image.new("RGB", (80, 80)))


def test_a_failing_batch_fails_only_its_own_requests(models, tmp_path) -> None:
    server = scripted_server(models, tmp_path).wait_ready()
    try:
        before = post_image(server.url, PHOTOS[0].read_bytes())
        failed = post_image(server.url, BLACK, content_type="image/png")
        after = post_image(server.url, PHOTOS[1].read_bytes())
        assert before.status_code == after.status_code == 200
        assert failed.status_code == 500 and failed.json()["error"]["code"] == "model_error"
        assert "a marked (all black) image" in failed.json()["error"]["message"]
        assert 'focalnet_errors_total{kind="model_error"} 1.0' in httpx.get(f"{server.url}/metrics").text
    finally:
        assert server.stop() == 0, server.output()


def test_a_full_queue_answers_503_and_a_long_wait_504(models, tmp_path) -> None:
    options = {"delay": 2.0, "max_batch_size": 1, "max_queue": 2, "timeout_s": 1.0}
    server = scripted_server(models, tmp_path, **options).wait_ready()
    try:
        barrier = threading.Barrier(6)

        def client(index: int) -> httpx.Response:
            barrier.wait()
            time.sleep(0.1 * index)  # in order: the first runs (2 s), two wait (and time out), the rest find it full
            return post_image(server.url, PHOTOS[0].read_bytes())

        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(client, range(6)))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200, 503, 503, 503, 504, 504], [r.text for r in responses]
        full = next(r for r in responses if r.status_code == 503)
        assert full.headers["retry-after"] == "1" and full.json()["error"]["code"] == "queue_full"
        late = next(r for r in responses if r.status_code == 504)
        assert late.json()["error"]["code"] == "queue_timeout"
        assert post_image(server.url, PHOTOS[1].read_bytes()).status_code == 200
    finally:
        assert server.stop() == 0, server.output()


def test_sigterm_drains_every_accepted_request_then_exits_0(models, tmp_path) -> None:
    server = scripted_server(models, tmp_path, delay=0.25, max_batch_size=4).wait_ready()
    images = distinct_images(16)
    try:
        with ThreadPoolExecutor(16) as pool:
            answered = metric(server.url, 'focalnet_requests_total{route="/predict",status="200"}')
            answers = [pool.submit(post_image, server.url, data) for data in images]
            deadline = time.monotonic() + 30
            while (  # until all 16 are accepted: in flight, or answered already
                metric(server.url, "focalnet_requests_in_flight")
                + metric(server.url, 'focalnet_requests_total{route="/predict",status="200"}')
                - answered
                < 16
            ):
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.01)
            assert metric(server.url, "focalnet_requests_in_flight") > 0, "nothing left in flight to drain"
            server.process.send_signal(signal.SIGTERM)
            probes, refused = [], None
            while server.process.poll() is None:
                try:
                    probes.append(httpx.get(f"{server.url}/health/ready", timeout=1).status_code)
                    refused = refused or post_image(server.url, images[0])
                except httpx.TransportError:
                    break
                time.sleep(0.02)
            results = [answer.result() for answer in answers]
    finally:
        status = server.stop()
    assert status == 0, server.output()
    assert [r.status_code for r in results] == [200] * 16, [r.text for r in results]
    assert probes and set(probes) == {503}, probes
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"


def test_workers_share_the_port_the_cores_and_one_set_of_metrics(models, classifier_server, tmp_path) -> None:
    """`--workers 2`: two processes on one port, each with half of torch's threads; whichever of them
    answers /metrics counts both; SIGTERM stops both, exit 0, and their metrics folder is gone."""
    folders_before = set(Path(tempfile.gettempdir()).glob("focalnet-metrics-*"))
    command = serve_command(models["classifier"], "--workers", "2")
    server = Server(command, tmp_path / "workers.log", env={"OMP_NUM_THREADS": None}).wait_ready()
    images = distinct_images(24)
    try:
        deadline = time.monotonic() + 90
        while metric(server.url, "focalnet_loaded_workers") < 2:  # one worker's own registry would say 1
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        assert httpx.get(f"{server.url}/model").json()["cpu_threads"] == max(1, torch.get_num_threads() // 2)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda data: post_image(server.url, data), images))
        scrapes = {metric(server.url, 'focalnet_requests_total{route="/predict",status="200"}') for _ in range(6)}
    finally:
        status = server.stop()
    assert status == 0, server.output()
    assert scrapes == {24.0}, scrapes
    for data, answer in zip(images, answers, strict=True):
        alone = post_image(classifier_server.url, data).json()
        assert [a["label"] for a in alone] == [b["label"] for b in answer.json()]
        assert np.allclose([a["score"] for a in alone], [b["score"] for b in answer.json()], atol=1e-5, rtol=0)
    assert set(Path(tempfile.gettempdir()).glob("focalnet-metrics-*")) == folders_before


def test_api_key_and_cors(models, classifier_server, tmp_path) -> None:
    origin = {"origin": "http://example.test"}
    plain = httpx.get(f"{classifier_server.url}/model", headers=origin)
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers  # no CORS by default

    command = serve_command(
        models["classifier"], "--api-key-env", "FOCALNET_TEST_KEY", "--cors-origin", origin["origin"]
    )
    server = start(command, tmp_path / "keyed.log", env={"FOCALNET_TEST_KEY": "s3cret"})
    try:
        url, good = server.url, PHOTOS[0].read_bytes()
        missing = post_image(url, good)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in missing.json()["error"]["message"]
        assert post_image(url, good, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert post_image(url, good, headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(f"{url}/health/ready").status_code == httpx.get(f"{url}/v2/health/live").status_code == 200
        allowed = httpx.get(f"{url}/model", headers={**origin, "authorization": "Bearer s3cret"})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == origin["origin"]
    finally:
        assert server.stop() == 0, server.output()


def test_ray_serve_replicas_answer_as_the_single_process(models, classifier_server, tmp_path) -> None:
    """`focalnet serve --ray --replicas 2` on a local Ray (this machine's 2 CPUs): the same routes and answers."""
    pytest.importorskip("ray.serve")
    ray_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must stay under 108 bytes
    command = serve_command(models["classifier"], "--ray", "--replicas", "2")
    server = Server(command, tmp_path / "ray.log", env={"RAY_TMPDIR": str(ray_dir)})
    try:
        server.wait_ready(timeout=240)
        images = distinct_images(8)
        with ThreadPoolExecutor(8) as pool:
            on_ray = list(pool.map(lambda data: post_image(server.url, data), images))
        for data, answer in zip(images, on_ray, strict=True):
            expected = post_image(classifier_server.url, data).json()
            assert answer.status_code == 200, answer.text
            assert [a["label"] for a in answer.json()] == [e["label"] for e in expected]
            assert np.allclose([a["score"] for a in answer.json()], [e["score"] for e in expected], atol=1e-5)
        assert httpx.get(f"{server.url}/model").json()["task"] == "image-classification"
        assert post_image(server.url, b"broken").json()["error"]["code"] == "not_an_image"
    finally:
        assert server.stop(timeout=120) == 0, server.output()
        shutil.rmtree(ray_dir, ignore_errors=True)


def test_a_model_that_cannot_be_loaded_stops_the_server_with_the_reason(tmp_path) -> None:
    server = Server(serve_command(tmp_path / "missing-model"), tmp_path / "missing.log")
    assert server.process.wait(timeout=60) == 1
    assert "the model could not be loaded" in server.output() and "missing-model" in server.output()
    server.stop()
