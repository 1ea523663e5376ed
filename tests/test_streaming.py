"""The streaming contract over WebDataset shards and streamed Hugging Face datasets: how shards are split
over processes and workers, the same steps on every process whatever the shard count (2 processes
under torchrun, guarded by a timeout), seeded shuffles, exact resume after a kill mid-epoch, `pipe:`
and fsspec URLs, and bad shards."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import random
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from focalnet.cli import main
from focalnet.training import Trainer, load_config
from focalnet.training.data import training_loader
from focalnet.training.distributed import Processes
from focalnet.training.streaming import StreamedSamples, sample_seed, shuffled, slot_shards
from focalnet.training.streaming import labelled_stream as open_labelled_stream
from test_data_sources import build_digit_sources, run
from test_training_runs import TINY_MODEL, final_weights, finish, max_difference, run_cli, torchrun, wait_and_kill

pytest.importorskip("webdataset")
pytestmark = [
    pytest.mark.usefixtures("hf_offline", "no_curves"),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"),
]


@pytest.fixture(scope="module")
def digit_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_digit_sources(tmp_path_factory.mktemp("digits"))


def shards(root: Path, split: str = "train", count: int = 4) -> str:
    return f"wds:{root}/shards/{split}-{{000000..{count - 1:06d}}}.tar"


def resharded(digit_sources: Path, directory: Path, size: int) -> Path:
    """The digits' training folder written again as shards of `size` (the val shards copied)."""
    folder = directory / "source"
    shutil.copytree(digit_sources / "folder" / "train", folder / "train")
    shutil.copytree(digit_sources / "folder" / "val", folder / "val")
    assert main(["make-shards", str(folder), str(directory / "shards"), "--shard-size", str(size)]) == 0
    return directory


# ------------------------------------------------------------------------------------------------
# Pieces
@pytest.mark.parametrize(
    ("shard_count", "slots", "expected"),
    [
        (4, 4, [([0], 1, 0), ([1], 1, 0), ([2], 1, 0), ([3], 1, 0)]),
        (5, 2, [([0, 2, 4], 1, 0), ([1, 3], 1, 0)]),
        (3, 4, [([0], 2, 0), ([1], 1, 0), ([2], 1, 0), ([0], 2, 1)]),  # shard 0 shared by slots 0 and 3
        (1, 3, [([0], 3, 0), ([0], 3, 1), ([0], 3, 2)]),
    ],
)
def test_slot_shards_cover_every_sample_once(shard_count: int, slots: int, expected: list) -> None:
    plans = [slot_shards(shard_count, slots, slot) for slot in range(slots)]
    assert plans == expected
    samples = 7
    read = Counter(
        (shard, position)
        for shard_list, stride, offset in plans
        for shard in shard_list
        for position in range(samples)
        if position % stride == offset
    )
    assert read == Counter({(shard, position): 1 for shard in range(shard_count) for position in range(samples)})


def test_shuffled_is_a_seeded_permutation() -> None:
    first = list(shuffled(iter(range(50)), 8, random.Random(1)))
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert first == list(shuffled(iter(range(50)), 8, random.Random(1)))
    assert first != list(shuffled(iter(range(50)), 8, random.Random(2)))
    assert list(shuffled(iter(range(5)), 0, random.Random(1))) == list(range(5))


def test_sample_seeds_are_stable_and_spread() -> None:
    assert sample_seed(0, 1, "a.tar", 3) == sample_seed(0, 1, "a.tar", 3)
    seeds = {sample_seed(0, epoch, "a.tar", position) for epoch in range(3) for position in range(100)}
    assert len(seeds) == 300 and all(0 <= seed < 2**62 for seed in seeds)


class Names(Dataset):
    """A probe in place of a task's dataset: a sample is its row's name and seed."""

    def __init__(self, source) -> None:
        self.source = source

    def __getitem__(self, item: tuple[int, int]) -> tuple[str, int]:
        return self.source.names[item[0]], item[1]


def names_per_process(stream, world: int, workers: int, batch: int, epoch: int = 0, start: int = 0) -> list[list]:
    """Each process's micro-batches of one epoch (as lists of (name, seed)), read through the engine's loader."""
    seen = []
    for rank in range(world):
        plan, loader = training_loader(
            StreamedSamples(stream, Names), batch, batch // world, rank, world, 7, workers, collate_fn=list
        )
        plan.set_epoch(epoch, start)
        seen.append(list(loader))
    return seen


def test_processes_and_workers_split_the_shards(digit_sources: Path, tmp_path: Path) -> None:
    """40 samples in 4 shards of 10 for 2 processes x 2 workers, global batch 4: each worker's 5 micro-batches
    of 2 take its shard, every sample once. 3 shards (16, 16, 8) for the same: every process still takes
    exactly 40 // 4 = 10 steps (some samples twice, some not). Seeds differ per epoch."""
    config = load_config(overrides={"data": shards(digit_sources)})
    stream = open_labelled_stream(config, config.data, "train")
    seen = names_per_process(stream, world=2, workers=2, batch=4)
    assert [len(batches) for batches in seen] == [10, 10] and all(len(b) == 2 for b in itertools.chain(*seen))
    names = [name for batches in seen for batch in batches for name, _ in batch]
    assert len(names) == 40 and len(set(names)) == 40

    uneven = resharded(digit_sources, tmp_path, 16)
    config = load_config(overrides={"data": shards(uneven, count=3)})
    stream = open_labelled_stream(config, config.data, "train")
    assert stream.samples == 40  # from _info.json
    seen = names_per_process(stream, world=2, workers=2, batch=4)
    assert [len(batches) for batches in seen] == [10, 10]
    assert Counter(len(batch) for batch in itertools.chain(*seen)) == {2: 20}
    names = Counter(name for batches in seen for batch in batches for name, _ in batch)
    assert sum(names.values()) == 40 and len(names) < 40  # some samples twice or more, others not at all

    again = names_per_process(stream, world=2, workers=2, batch=4)
    later = names_per_process(stream, world=2, workers=2, batch=4, epoch=1)
    assert again == seen  # seeded: the same epoch repeats
    assert {seed for batches in later for batch in batches for _, seed in batch}.isdisjoint(
        {seed for batches in seen for batch in batches for _, seed in batch}
    )


def test_a_mid_epoch_start_continues_without_repeating(digit_sources: Path) -> None:
    config = load_config(overrides={"data": shards(digit_sources)})
    stream = open_labelled_stream(config, config.data, "train")
    whole = names_per_process(stream, world=1, workers=2, batch=4)[0]
    for start in (3, 4):  # (after an odd number of batches the other worker's stream comes first)
        assert names_per_process(stream, world=1, workers=2, batch=4, start=start)[0] == whole[start:]
    assert len(whole) == 10


# ------------------------------------------------------------------------------------------------
# Two processes under torchrun
PROBE = """
import json, sys
import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from focalnet.training import distributed, load_config
from focalnet.training.data import training_loader
from focalnet.training.streaming import StreamedSamples, labelled_stream


class Names(Dataset):
    def __init__(self, source):
        self.source = source

    def __getitem__(self, item):
        return self.source.names[item[0]]


processes = distributed.start("cpu")
report = {}
for pattern in sys.argv[2:]:
    stream = labelled_stream(load_config(overrides={"data": pattern}), pattern, "train")
    plan, loader = training_loader(
        StreamedSamples(stream, Names), 4, 2, processes.rank, processes.world, 0, 2, collate_fn=list
    )
    plan.set_epoch(0)
    names = []
    for batch in loader:  # an all-reduce per step, as DDP does: a process with fewer steps would hang here
        dist.all_reduce(torch.ones(1))
        names += batch
    report[pattern] = processes.gather(names)
if processes.is_main:
    with open(sys.argv[1], "w") as handle:
        json.dump(report, handle)
distributed.stop()
"""


def test_two_processes_over_shards_take_the_same_steps(digit_sources: Path, tmp_path: Path) -> None:
    """2 processes x 2 workers under torchrun (gloo), global batch 4: 4 shards of 10, every sample once;
    3 shards, the same 10 steps on each process, no hang (the timeout)."""
    uneven = resharded(digit_sources, tmp_path / "uneven", 16)
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    report = tmp_path / "seen.json"
    even_pattern, uneven_pattern = shards(digit_sources), shards(uneven, count=3)
    launcher = torchrun(tmp_path / "logs", str(probe))
    finish(run_cli([even_pattern, uneven_pattern], launcher=launcher, command=str(report)), timeout=120)
    seen = json.loads(report.read_text())
    even = seen[even_pattern]
    assert [len(names) for names in even] == [20, 20] and len(set(even[0] + even[1])) == 40
    assert [len(names) for names in seen[uneven_pattern]] == [20, 20]


def test_two_process_training_over_three_shards_finishes(digit_sources: Path, tmp_path: Path) -> None:
    """`focalnet train` under torchrun on 3 shards for 2 processes x 2 workers: every epoch the 5 steps."""
    uneven = resharded(digit_sources, tmp_path / "uneven", 16)
    settings = {"model_overrides": TINY_MODEL, "epochs": 2, "batch_size": 8, "workers": 2}
    args = ["--recipe", "demo", "--data", shards(uneven, count=3), "--output-dir", str(tmp_path / "run")]
    args += [f"--set={key}={json.dumps(value)}" for key, value in settings.items()]
    finish(run_cli(args, launcher=torchrun(tmp_path / "logs")), timeout=180)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [5, 10]


# ------------------------------------------------------------------------------------------------
# Resume, URLs, bad shards
@pytest.mark.numerics
def test_resume_after_kill_mid_epoch_over_shards_matches_an_uninterrupted_run(
    digit_sources: Path, tmp_path: Path
) -> None:
    """The README's promise: a mid-epoch checkpoint continues the epoch without repeating a sample, so the
    resumed run ends with the uninterrupted run's weights, bit for bit."""
    settings = {"model_overrides": TINY_MODEL, "epochs": 2, "batch_size": 4, "workers": 2, "shuffle_buffer": 6}
    settings |= {"deterministic": True, "checkpoint_every": 2, "drop_path_rate": 0.1}

    def arguments(output_dir: Path) -> list[str]:
        args = ["--recipe", "demo", "--data", shards(digit_sources), "--output-dir", str(output_dir)]
        return args + [f"--set={key}={json.dumps(value)}" for key, value in settings.items()]

    reference = run_cli(arguments(tmp_path / "reference"))
    victim = run_cli(arguments(tmp_path / "killed"))
    wait_and_kill(victim, tmp_path / "killed")
    finish(run_cli(["--resume", "--output-dir", str(tmp_path / "killed")]))
    finish(reference)
    assert max_difference(final_weights(tmp_path / "killed"), final_weights(tmp_path / "reference")) == 0
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) == 2


class StopAtFirstCheckpoint(Trainer):
    """A trainer that stops once it has written its first (mid-epoch) checkpoint."""

    def save_checkpoint(self) -> None:
        super().save_checkpoint()
        raise StopIteration


def test_resume_with_other_workers_warns(digit_sources: Path, tmp_path: Path) -> None:
    """A mid-epoch position in a stream belongs to its processes x workers: another layout is named."""
    values = {"data": shards(digit_sources), "model_overrides": TINY_MODEL, "batch_size": 8, "checkpoint_every": 1}
    config = load_config(recipe="demo", overrides={**values, "output_dir": str(tmp_path)})
    with pytest.raises(StopIteration):
        StopAtFirstCheckpoint(config, Processes(0, 1, torch.device("cpu"))).fit()
    other = Trainer(dataclasses.replace(config, workers=2), Processes(0, 1, torch.device("cpu")))
    with pytest.warns(
        UserWarning, match=r"\{'processes': 1, 'workers': 0\}, this run has \{'processes': 1, 'workers': 2\}"
    ):
        other.load_checkpoint(tmp_path / "checkpoint-last.pt")
    assert other.progress.batch == 1


def test_pipe_commands_and_fsspec_urls_stream(digit_sources: Path, tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    for path in (digit_sources / "shards").iterdir():
        memory.pipe(f"/digit-shards/{path.name}", path.read_bytes())
    rows = run("classification", "wds:memory://digit-shards/train-{000000..000003}.tar", tmp_path / "memory")
    assert rows[0]["step"] == 5  # the epoch length and the val split from the _info.json in memory

    pipe = f"wds:pipe:cat {digit_sources}/shards/train-{{000000..000003}}.tar"
    classes = [f"digit{d}" for d in range(10)]  # (no _info.json beside a command)
    val_data = shards(digit_sources, "val", 2)
    rows = run("classification", pipe, tmp_path / "pipe", train_samples=24, val_data=val_data, class_names=classes)
    assert rows[0]["step"] == 3  # 24 samples per epoch, batch 8


def test_streamed_hugging_face_dataset_trains(digit_sources: Path, tmp_path: Path) -> None:
    """`--streaming` reads a Hugging Face dataset through the shard path; the epoch is the split size its
    card gives (as the hub's cards do), the validation split is streamed too."""
    shutil.copytree(digit_sources / "parquet", tmp_path / "data")
    card = "---\ndataset_info:\n  splits:\n  - name: train\n    num_examples: 40\n  - name: validation\n"
    (tmp_path / "data" / "README.md").write_text(card + "    num_examples: 20\n---\n")
    rows = run("classification", f"hf:{tmp_path}/data", tmp_path / "run", streaming=True, workers=2)
    assert rows[0]["step"] == 5 and rows[0]["skipped_images"] == 0


def test_a_corrupt_sample_is_skipped_and_counted(digit_sources: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "shards"
    shutil.copytree(digit_sources / "shards", damaged)
    path = damaged / "train-000001.tar"
    with tarfile.open(path) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            data = b"\x89PNG\r\n\x1a\n broken" if info.name == "000000012.png" else data
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    rows = run("classification", f"wds:{damaged}/train-{{000000..000003}}.tar", tmp_path / "run")
    assert rows[0]["skipped_images"] == 1 and rows[0]["step"] == 5


def test_shard_errors_name_the_file_and_the_fix(digit_sources: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train-000000.tar").write_text("not a tar archive")
    base = ["train", "--recipe", "demo", "--output-dir", str(tmp_path / "run"), "--set=batch_size=8"]
    not_tar = [*base, "--data", f"wds:{tmp_path}/bad/train-000000.tar", "--train-samples", "8"]
    assert main([*not_tar, "--val-data", shards(digit_sources, "val", 2), '--set=class_names=["a"]']) == 2
    assert f"shard {tmp_path}/bad/train-000000.tar is not a tar file" in capsys.readouterr().err

    unknown_length = [*base, "--data", f"wds:pipe:cat {digit_sources}/shards/train-000000.tar", "--overwrite"]
    assert main([*unknown_length, "--val-data", shards(digit_sources, "val", 2), '--set=class_names=["a"]']) == 2
    assert "needs the epoch length" in capsys.readouterr().err
