"""`focalnet serve` in a subprocess on a free loopback port, for the serving and browser tests; and
the tiny saved models (one per task) they serve."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

import focalnet
from focalnet.image_processing import FocalNetImageProcessor

PHOTOS = sorted((Path(__file__).parent / "data" / "images").glob("*.jpg"))
LABELS = {0: "apple", 1: "bear", 2: "cat", 3: "dog", 4: "eagle", 5: "fox"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A server process; `url` once ready. Its output goes to a log file (read it on failure)."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str | None] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        environment = {name: value for name, value in environment.items() if value is not None}  # None: unset
        self.log = log.open("w")
        command = [part.replace("{port}", str(self.port)) for part in command]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=environment)

    def wait_ready(self, timeout: float = 90) -> Server:
        """Until /health/ready says 200; a server that exits or stays unready fails the test (and is stopped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise AssertionError(f"the server exited ({self.process.returncode}):\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.log.close()

    def resident_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


def serve_command(model: str | Path | None, *options: str) -> list[str]:
    """`focalnet serve MODEL --port {port} OPTIONS` (the port is filled in by `Server`)."""
    source = [str(model)] if model is not None else []
    return [sys.executable, "-m", "focalnet.cli", "serve", *source, "--port", "{port}", *options]


def start(command: list[str], log: Path, env: dict[str, str] | None = None) -> Server:
    return Server(command, log, env).wait_ready()


# ------------------------------------------------------------------------------------------------
# tiny models of every kind, saved as users save them
def save_classifier(directory: Path) -> Path:
    torch.manual_seed(0)
    config = focalnet.FocalNetConfig(
        embed_dim=16, depths=[1, 1], focal_levels=[2, 2], focal_windows=[3, 3], image_size=64, id2label=LABELS
    )
    model = focalnet.FocalNetForImageClassification(config)
    model.save_pretrained(directory)
    FocalNetImageProcessor(crop_size=64, crop_pct=0.875, resample="bicubic").save_pretrained(directory)
    return directory


def save_simmim(directory: Path) -> Path:
    torch.manual_seed(1)
    config = focalnet.FocalNetConfig(embed_dim=16, depths=[1, 1], image_size=64, encoder_stride=8)
    focalnet.FocalNetForMaskedImageModeling(config).save_pretrained(directory)
    FocalNetImageProcessor(crop_size=64, crop_pct=1.0).save_pretrained(directory)
    return directory


def save_detector(directory: Path, architecture: str) -> Path:
    from focalnet.detection import build_detector, save_pretrained

    torch.manual_seed(2)
    backbone = focalnet.FocalNetConfig(embed_dim=16, depths=[1, 1, 1, 1], focal_windows=[9] * 4)
    model = build_detector(
        architecture,
        backbone,
        categories=["circle", "square", "triangle"],
        fpn_channels=16,
        min_size=96,
        max_size=128,
        box_score_thresh=0.0,  # random weights score low: keep everything, the threshold is the server's
        rpn_post_nms_top_n_test=30,
        box_detections_per_img=20,
    )
    save_pretrained(model, directory)
    return directory


def save_upernet(directory: Path) -> Path:
    from focalnet.segmentation import UperNetConfig, UperNetForSemanticSegmentation
    from focalnet.segmentation.inference import SegmentationPreprocessing

    torch.manual_seed(3)
    backbone = focalnet.FocalNetConfig(
        embed_dim=16,
        depths=[1, 1, 1, 1],
        focal_windows=[9] * 4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        use_backbone_layernorm=True,
    )
    config = UperNetConfig(
        backbone_config=backbone,
        hidden_size=32,
        auxiliary_channels=16,
        num_labels=4,
        id2label={0: "background", 1: "circle", 2: "square", 3: "triangle"},
    )
    UperNetForSemanticSegmentation(config).save_pretrained(directory)
    SegmentationPreprocessing(test_scale=(128, 96)).save(directory)
    return directory
