"""Speed and memory of this library against `transformers` and `timm`, with identical weights.

All models run in one process; every timed repetition runs each model once, in rotating
order, so that machine drift hits all of them alike, and the median of the repetitions is
reported. Before timing, the logits of every model are compared with ours in fp32, so a
faster peer cannot be a wrong one. The peers are optional: one that is not installed, or
cannot express a config, is skipped with a note. See `benchmarks/README.md`.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import gc
import json
import os
import platform
import socket
import statistics
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__, fused
from ._io import atomic_write
from .configuration import FocalNetConfig
from .formats import hf_to_timm
from .modeling import FocalNetForImageClassification

MODES = (
    "eager",
    "plain",
    "compile",
    "bf16",
    "compile-bf16",
    "amp",
    "channels-last",
    "int8",
    "onnxruntime",
    "train",
    "train-compile",
)
DEFAULT_MODES = ("eager", "plain", "compile", "bf16", "int8", "train")
DEFAULT_PRESETS = ("focalnet-tiny", "focalnet-tiny-lrf", "focalnet-base")
DEFAULT_BATCH_SIZES = (1, 8, 32)
OURS = "ours"
PEERS = ("transformers", "timm")
PARITY_TOLERANCE = 1e-4  # fp32 logits of the peers must agree with ours this closely


class Metric(NamedTuple):
    label: str
    higher_is_better: bool


METRICS = {
    "latency_ms": Metric("latency ms (lower is better)", False),
    "throughput_img_s": Metric("throughput img/s (higher is better)", True),
    "train_step_ms": Metric("train step ms (lower is better)", False),
    "peak_memory_mib": Metric("peak memory MiB (lower is better)", False),
    "activation_memory_mib": Metric("activations after forward MiB (lower)", False),
}

Runner = Callable[[torch.Tensor], Any]  # pixel values -> a model's output


class PeerUnavailable(Exception):
    """A peer library is missing or cannot express the config."""


@dataclass(frozen=True)
class BenchmarkSettings:
    """What every job measures. `warmup` untimed runs per model precede the `repeats` timed ones."""

    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    repeats: int = 5
    warmup: int = 2
    train_batch_size: int = 16
    image_size: int = 224
    device: str = "cpu"
    seed: int = 0
    learning_rate: float = 1e-4

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.warmup < 1:
            raise ValueError(f"repeats and warmup must be at least 1, got {self.repeats} and {self.warmup}")
        if not self.batch_sizes or min(self.batch_sizes) < 1 or self.train_batch_size < 1:
            raise ValueError(f"batch sizes must be positive, got {self.batch_sizes} and {self.train_batch_size}")


@dataclass(frozen=True)
class Job:
    """One model config in one mode."""

    name: str
    config: FocalNetConfig
    mode: str


@dataclass
class Measurement:
    """One metric of one model at one batch size: every repetition, their median and, for our
    models, the ratio ours / peer of the medians (to each peer and to the best one)."""

    model: str
    metric: str
    batch_size: int
    runs: list[float]
    median: float = field(init=False)
    ratio_to_peers: dict[str, float] = field(default_factory=dict)
    best_peer: str | None = None
    ratio_to_best_peer: float | None = None

    def __post_init__(self) -> None:
        self.median = statistics.median(self.runs)


@dataclass
class JobResult:
    """What one job found. `parity`: max |logits - ours| in fp32 per peer; `accuracy`: each
    model as run in this mode against our fp32 logits (max abs error, lowest per-image cosine)."""

    name: str
    mode: str
    config: dict[str, Any]
    models: list[str]
    notes: list[str]
    parity: dict[str, float]
    accuracy: dict[str, dict[str, float]]
    measurements: list[Measurement]
    error: str | None = None


@dataclass
class BenchmarkReport:
    """All results with the machine and settings that produced them."""

    machine: dict[str, Any]
    settings: BenchmarkSettings
    results: list[JobResult]

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": asdict(self.settings),
            "results": [asdict(r) for r in self.results],
        }

    def write_json(self, path: str | os.PathLike) -> None:
        with atomic_write(path) as handle:
            json.dump(self.to_dict(), handle, indent=2)
            handle.write("\n")

    def table(self) -> str:
        return "\n\n".join([format_machine(self.machine), *(format_result(r) for r in self.results), summary(self)])


# ------------------------------------------------------------------------------------------------
# the contenders: our model and the peers, with the same weights
def preset_configs(names: Iterable[str]) -> dict[str, FocalNetConfig]:
    return {name: FocalNetConfig.from_preset(name) for name in names}


def build_models(config: FocalNetConfig, seed: int) -> tuple[dict[str, nn.Module], list[str]]:
    """Ours with seeded random weights, and each available peer loaded with the same weights."""
    torch.manual_seed(seed)
    ours = FocalNetForImageClassification(config)
    models: dict[str, nn.Module] = {OURS: ours}
    notes = []
    for name, build in (("transformers", transformers_model), ("timm", timm_model)):
        try:
            models[name] = build(ours, config)
        except (ImportError, PeerUnavailable) as err:
            notes.append(f"{name} skipped: {err}")
    return models, notes


def transformers_model(ours: nn.Module, config: FocalNetConfig) -> nn.Module:
    """`transformers.FocalNetForImageClassification` from the keys of our config that it knows."""
    import transformers

    known = transformers.FocalNetConfig().to_dict().keys() - {"model_type", "stage_names", "transformers_version"}
    kwargs = {key: value for key, value in config.to_dict().items() if key in known}
    model = transformers.FocalNetForImageClassification(transformers.FocalNetConfig(**kwargs))
    model.load_state_dict(ours.state_dict(), strict=True)
    return model


def timm_model(ours: nn.Module, config: FocalNetConfig) -> nn.Module:
    """timm's `FocalNet` with the matching arguments, loaded through `hf_to_timm`."""
    from timm.models.focalnet import FocalNet

    if config.patch_size_2d != (4, 4):
        raise PeerUnavailable(f"timm's stem has 4x4 patches, this config {config.patch_size_2d}")
    if config.hidden_act != "gelu" or config.layer_norm_eps != 1e-5:
        raise PeerUnavailable("timm's blocks use GELU and LayerNorm eps 1e-5 only")
    model = FocalNet(
        in_chans=config.num_channels,
        num_classes=config.num_labels,
        embed_dim=config.embed_dim,
        depths=tuple(config.depths),
        mlp_ratio=config.mlp_ratio,
        focal_levels=tuple(config.focal_levels),
        focal_windows=tuple(config.focal_windows),
        use_overlap_down=config.use_conv_embed,
        use_post_norm=config.use_post_layernorm,
        use_post_norm_in_modulation=config.use_post_layernorm_in_modulation,
        normalize_modulator=config.normalize_modulator,
        layerscale_value=config.layerscale_value if config.use_layerscale else None,
        proj_drop_rate=config.hidden_dropout_prob,
        drop_path_rate=config.drop_path_rate,
    )
    model.load_state_dict(hf_to_timm(ours.state_dict(), config), strict=True)
    return model


def logits_of(output: Any) -> torch.Tensor:
    """timm returns the logits, ours and transformers an output object."""
    return output if isinstance(output, torch.Tensor) else output.logits


def autocast_bf16(model: nn.Module, device_type: str) -> Runner:
    """`model` under bf16 autocast (the weights stay fp32)."""

    def run(pixel_values: torch.Tensor) -> Any:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return model(pixel_values)

    return run


def without_fused_blocks(model: nn.Module) -> Runner:
    """`model` on its plain path: the one CUDA runs and `torch.compile` starts from."""

    def run(pixel_values: torch.Tensor) -> Any:
        with fused.flags(enabled=False):
            return model(pixel_values)

    return run


def onnxruntime_runner(model: nn.Module) -> Runner:
    """`model` exported to ONNX (dynamic shapes) and run by onnxruntime with as many threads as torch."""
    from .export import export_onnx, onnx_session, run_session

    with tempfile.TemporaryDirectory() as tmp:
        session = onnx_session(export_onnx(model, Path(tmp) / "model.onnx"), threads=torch.get_num_threads())
    return lambda pixel_values: run_session(session, ["logits"], pixel_values)[0]


def inference_runners(
    models: dict[str, nn.Module], mode: str, device: torch.device
) -> tuple[dict[str, Runner], torch.dtype, list[str]]:
    """Each model as `mode` runs it, the input dtype, and notes. Every model gets the same treatment."""
    for model in models.values():
        model.eval()
    if mode == "eager":
        return dict(models), torch.float32, []
    if mode == "plain":
        return {**models, OURS: without_fused_blocks(models[OURS])}, torch.float32, ["plain: the peers run eagerly"]
    if mode == "compile":
        return {name: torch.compile(m, dynamic=False) for name, m in models.items()}, torch.float32, []
    if mode == "bf16":
        return {name: m.to(torch.bfloat16) for name, m in models.items()}, torch.bfloat16, []
    if mode == "compile-bf16":
        return (
            {name: torch.compile(m.to(torch.bfloat16), dynamic=False) for name, m in models.items()},
            torch.bfloat16,
            [],
        )
    if mode == "channels-last":
        return {name: m.to(memory_format=torch.channels_last) for name, m in models.items()}, torch.float32, []
    if mode == "amp":
        return {name: autocast_bf16(m, device.type) for name, m in models.items()}, torch.float32, []
    if mode == "onnxruntime":
        if device.type != "cpu":
            return {}, torch.float32, ["onnxruntime skipped: it runs here on the CPU only"]
        try:
            exported = onnxruntime_runner(models[OURS])
        except ImportError as err:
            return {}, torch.float32, [f"onnxruntime skipped: {err}"]
        return {"ours-onnxruntime": exported, **models}, torch.float32, ["onnxruntime: the others run eagerly"]
    if mode == "int8":
        if device.type != "cpu":
            return {}, torch.float32, ["int8 skipped: dynamic int8 quantisation runs on the CPU only"]
        from .quantization import quantize_dynamic_int8

        peers = {name: m for name, m in models.items() if name != OURS}
        return (
            {"ours-int8": quantize_dynamic_int8(models[OURS]), **peers},
            torch.float32,
            ["int8: the peers run in fp32 (eager)"],
        )
    raise ValueError(f"unknown mode {mode!r}; choose from: {', '.join(MODES)}")


# ------------------------------------------------------------------------------------------------
# timing and memory
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    steps: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each step: warm-ups first, then `repeats` rounds of every step in
    rotating order."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    synchronize(device)
    names = list(steps)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            steps[name]()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def resident_bytes() -> int | None:
    """This process's resident set size (Linux), or None where /proc is missing."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


class PeakResidentSampler:
    """Highest resident set size seen by a thread polling `resident_bytes` while the block runs."""

    def __init__(self, interval: float = 0.0005) -> None:
        self.interval = interval
        self.baseline = self.peak = resident_bytes() or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, resident_bytes() or 0)

    def __enter__(self) -> PeakResidentSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes() or 0)


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc), so the next peak starts low."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory_mib(step: Callable[[], Any], device: torch.device) -> float | None:
    """Memory one call of `step` adds at its peak: CUDA max allocated, else the CPU RSS increase."""
    release_free_memory()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    if resident_bytes() is None:
        return None
    with PeakResidentSampler() as sampler:
        step()
    return (sampler.peak - sampler.baseline) / 2**20


def measure(
    steps: dict[str, Callable[[], Any]], batch_size: int, metric: str, settings: BenchmarkSettings
) -> list[Measurement]:
    """Interleaved timing of the steps, then each one's peak memory on its own."""
    device = torch.device(settings.device)
    seconds = time_interleaved(steps, settings.repeats, settings.warmup, device)
    to_value = (lambda s: batch_size / s) if metric == "throughput_img_s" else (lambda s: 1000 * s)
    found = [Measurement(name, metric, batch_size, [to_value(s) for s in runs]) for name, runs in seconds.items()]
    for name, step in steps.items():
        memory = peak_memory_mib(step, device)
        if memory is not None:
            found.append(Measurement(name, "peak_memory_mib", batch_size, [memory]))
    return found


# ------------------------------------------------------------------------------------------------
# the jobs
def make_input(
    config: FocalNetConfig,
    batch_size: int,
    settings: BenchmarkSettings,
    dtype: torch.dtype,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(settings.seed)
    shape = (batch_size, config.num_channels, settings.image_size, settings.image_size)
    return torch.randn(shape, generator=generator).to(settings.device, dtype, memory_format=memory_format)


def input_format(mode: str) -> torch.memory_format:
    """The memory format of the pixels a mode feeds (channels_last for "channels-last")."""
    return torch.channels_last if mode == "channels-last" else torch.contiguous_format


def compare_logits(logits: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    logits, reference = logits.float(), reference.float()
    return {
        "max_abs_err": (logits - reference).abs().max().item(),
        "cosine": F.cosine_similarity(logits, reference, dim=-1).min().item(),
    }


def benchmark_inference(
    models: dict[str, nn.Module], job: Job, settings: BenchmarkSettings, reference: torch.Tensor
) -> tuple[dict[str, dict[str, float]], list[Measurement], list[str]]:
    """Check each model as the mode runs it against our fp32 logits, then time every batch size."""
    device = torch.device(settings.device)
    runners, dtype, notes = inference_runners(models, job.mode, device)
    if not runners:
        return {}, [], notes
    measurements: list[Measurement] = []
    with torch.inference_mode():
        memory_format = input_format(job.mode)
        check_input = make_input(job.config, min(settings.batch_sizes), settings, dtype, memory_format)
        accuracy = {name: compare_logits(logits_of(run(check_input)), reference) for name, run in runners.items()}
        for batch_size in settings.batch_sizes:
            pixel_values = make_input(job.config, batch_size, settings, dtype, memory_format)
            steps = {name: partial(run, pixel_values) for name, run in runners.items()}
            metric = "latency_ms" if batch_size == 1 else "throughput_img_s"
            measurements += measure(steps, batch_size, metric, settings)
    return accuracy, measurements, notes


def held_memory_mib(call: Callable[[], Any], device: torch.device) -> float | None:
    """Memory still held once `call` returns, with its result kept alive (for a forward pass with
    autograd on: the activations saved for backward)."""
    release_free_memory()
    synchronize(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else resident_bytes()
    if before is None:
        return None
    result = call()
    synchronize(device)
    after = torch.cuda.memory_allocated(device) if device.type == "cuda" else resident_bytes()
    del result
    return (after - before) / 2**20


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, pixel_values: torch.Tensor, labels: torch.Tensor
) -> None:
    """Forward, cross-entropy on the logits, backward, AdamW. Gradients are zeroed in place, so
    after the first step they (and the optimizer state) are allocated and the peak memory of a
    step is its activations and workspace."""
    optimizer.zero_grad(set_to_none=False)
    F.cross_entropy(logits_of(model(pixel_values)), labels).backward()
    optimizer.step()


def checkpointed(model: nn.Module, step: Callable[[], Any]) -> Any:
    model.gradient_checkpointing_enable()
    try:
        return step()
    finally:
        model.gradient_checkpointing_disable()


def benchmark_training(models: dict[str, nn.Module], job: Job, settings: BenchmarkSettings) -> list[Measurement]:
    """A training step of every model (each compiled in "train-compile"), and of ours with gradient
    checkpointing where it has it (eagerly)."""
    batch_size = settings.train_batch_size
    pixel_values = make_input(job.config, batch_size, settings, torch.float32)
    labels = torch.randint(job.config.num_labels, (batch_size,), generator=torch.Generator().manual_seed(0))
    labels = labels.to(settings.device)
    compiled = job.mode == "train-compile"
    steps, forwards = {}, {}
    for name, model in models.items():
        optimizer = torch.optim.AdamW(model.train().parameters(), lr=settings.learning_rate)
        runner = torch.compile(model, dynamic=False) if compiled else model
        steps[name] = partial(train_step, runner, optimizer, pixel_values, labels)
        forwards[name] = partial(runner, pixel_values)
        if name == OURS and hasattr(model, "gradient_checkpointing_enable") and not compiled:
            steps["ours+checkpointing"] = partial(checkpointed, model, steps[OURS])
            forwards["ours+checkpointing"] = partial(checkpointed, model, forwards[OURS])
    found = measure(steps, batch_size, "train_step_ms", settings)
    for name, forward in forwards.items():
        held = held_memory_mib(forward, torch.device(settings.device))
        if held is not None:
            found.append(Measurement(name, "activation_memory_mib", batch_size, [held]))
    return found


def run_job(job: Job, settings: BenchmarkSettings) -> JobResult:
    """Build the models, check their fp32 parity, and measure them in the job's mode."""
    models, notes = build_models(job.config, settings.seed)
    for model in models.values():
        model.to(settings.device).eval()
    with torch.inference_mode():
        check_input = make_input(job.config, min(settings.batch_sizes), settings, torch.float32)
        fp32_logits = {name: logits_of(model(check_input)) for name, model in models.items()}
    reference = fp32_logits[OURS]
    parity = {name: (logits - reference).abs().max().item() for name, logits in fp32_logits.items() if name != OURS}
    notes += [
        f"WARNING: {name} fp32 logits differ from ours by {d:.3g}" for name, d in parity.items() if d > PARITY_TOLERANCE
    ]
    accuracy: dict[str, dict[str, float]] = {}
    try:
        if job.mode.startswith("train"):
            measurements = benchmark_training(models, job, settings)
        else:
            accuracy, measurements, mode_notes = benchmark_inference(models, job, settings, reference)
            notes += mode_notes
    finally:
        if "compile" in job.mode:
            torch._dynamo.reset()
    attach_ratios(measurements)
    measured = list(dict.fromkeys(m.model for m in measurements)) or list(models)
    return JobResult(job.name, job.mode, config_summary(job.config), measured, notes, parity, accuracy, measurements)


def config_summary(config: FocalNetConfig) -> dict[str, Any]:
    """The config as JSON, without the label names."""
    return {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")}


def failed_job(job: Job, error: Exception) -> JobResult:
    """The record of a job that raised: its traceback instead of numbers."""
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return JobResult(job.name, job.mode, config_summary(job.config), [], [], {}, {}, [], error=trace)


def attach_ratios(measurements: list[Measurement]) -> None:
    """For each of our rows: ours / peer of the medians, per peer and for the best peer of the metric."""
    for ours in measurements:
        if ours.model in PEERS:
            continue
        peers = {
            m.model: m.median
            for m in measurements
            if m.model in PEERS and (m.metric, m.batch_size) == (ours.metric, ours.batch_size) and m.median > 0
        }
        if not peers:
            continue
        ours.ratio_to_peers = {name: ours.median / value for name, value in peers.items()}
        pick = max if METRICS[ours.metric].higher_is_better else min
        ours.best_peer = pick(peers, key=peers.__getitem__)
        ours.ratio_to_best_peer = ours.ratio_to_peers[ours.best_peer]


def plan_jobs(configs: Mapping[str, FocalNetConfig], modes: Sequence[str]) -> list[Job]:
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from: {', '.join(MODES)}")
    return [Job(name, config, mode) for name, config in configs.items() for mode in modes]


def run_benchmark(
    configs: Mapping[str, FocalNetConfig],
    modes: Sequence[str] = DEFAULT_MODES,
    settings: BenchmarkSettings | None = None,
    wrap: Callable[[list[Job]], Iterable[Job]] = iter,
    echo: Callable[[str], None] | None = None,
) -> BenchmarkReport:
    """Run every mode for every config. `wrap` may add a progress bar over the jobs; `echo`, if
    given, receives each job's table as soon as it is done. A job that raises is recorded with
    its traceback (`JobResult.error`) and the others still run."""
    settings = settings or BenchmarkSettings()
    machine = machine_info(settings.device)
    if echo is not None:
        echo(format_machine(machine))
    results = []
    for job in wrap(plan_jobs(configs, modes)):
        try:
            results.append(run_job(job, settings))
        except Exception as err:  # a broken mode must not lose the other jobs' numbers
            results.append(failed_job(job, err))
        if echo is not None:
            echo(format_result(results[-1]))
    report = BenchmarkReport(machine, settings, results)
    if echo is not None:
        echo(summary(report))
    return report


# ------------------------------------------------------------------------------------------------
# machine and output
def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "device": device,
        "versions": {name: package_version(name) for name in ("torch", "transformers", "timm")},
    }
    info["versions"]["focalnet"] = __version__
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def format_machine(machine: dict[str, Any]) -> str:
    versions = ", ".join(f"{name} {version or 'missing'}" for name, version in machine["versions"].items())
    where = machine.get("gpu") or f"{machine['cpu']} ({machine['cpu_capability']})"
    return (
        f"{machine['date']}  {machine['host']}  device {machine['device']}: {where}\n"
        f"{machine['cpu_count']} CPUs, {machine['torch_threads']} torch threads, "
        f"load average {machine['load_average'][0]:.2f}; {versions}"
    )


def format_result(result: JobResult) -> str:
    models = f" | {', '.join(result.models)}" if result.models else ""
    lines = [f"== {result.name} | {result.mode}{models}"]
    if result.parity:
        lines.append("   fp32 logits vs ours: " + ", ".join(f"{n} max|diff| {d:.2g}" for n, d in result.parity.items()))
    if result.accuracy:
        checks = [f"{n} max|err| {a['max_abs_err']:.2g} cos {a['cosine']:.5f}" for n, a in result.accuracy.items()]
        lines.append(f"   {result.mode} logits vs ours fp32: " + ", ".join(checks))
    lines += [f"   note: {note}" for note in result.notes]
    if result.error:
        lines.append(f"   FAILED: {result.error.strip().splitlines()[-1]}")
    if result.measurements:
        lines.append(f"   {'batch':>5}  {'metric':<36} {'model':<20} {'median':>10} {'spread':>7}  ratio ours/peer")
    for m in sorted(result.measurements, key=lambda m: (m.batch_size, m.metric == "peak_memory_mib")):
        spread = (max(m.runs) - min(m.runs)) / m.median if len(m.runs) > 1 and m.median else None
        ratio = f"{m.ratio_to_best_peer:.3f} vs {m.best_peer}" if m.best_peer else ""
        spread_text = f"{spread:6.1%}" if spread is not None else ""
        label = METRICS[m.metric].label
        row = f"   {m.batch_size:>5}  {label:<36} {m.model:<20} {m.median:>10.2f} {spread_text:>7}  {ratio}"
        lines.append(row.rstrip())
    return "\n".join(lines)


def summary(report: BenchmarkReport) -> str:
    """One line per ratio; img/s: >1 means ours is faster; ms and MiB: <1 means ours is faster / smaller."""
    lines = ["ratios ours / best peer (img/s: >1 = ours faster; ms, MiB: <1 = ours faster / smaller)"]
    for result in report.results:
        for m in result.measurements:
            if m.best_peer:
                lines.append(
                    f"  {result.name:<20} {result.mode:<8} batch {m.batch_size:>3} {METRICS[m.metric].label:<36} "
                    f"{m.model:<20} {m.ratio_to_best_peer:6.3f} vs {m.best_peer}"
                )
    return "\n".join(lines)
