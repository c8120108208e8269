"""EuroSAT data: source resolution, federated partitions, decode-once tensors, batching.

Each JPEG is decoded once per process into a uint8 NCHW tensor and cached; batches are
normalised in torch, vectorised, as `(x/255 - 0.5)/0.5`. Per-sample decoding per epoch
would dominate a small CNN's step time on CPU.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HUB_DATASET = "tanganke/eurosat"
DATA_ENV = "EUROSAT_DATA"
PARTITIONERS = ("iid", "dirichlet")
DIRICHLET_MIN_PARTITION = 10  # rows; flwr-datasets redraws until every partition has this many
CLASS_NAMES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
               "PermanentCrop", "Residential", "River", "SeaLake")  # label i is CLASS_NAMES[i]
NUM_CLASSES = len(CLASS_NAMES)  # the model's output layer follows the data


class DataError(ValueError):
    """Bad data source: a missing folder or one without the expected parquet files."""


@dataclass(frozen=True)
class Source:
    """Where EuroSAT comes from: a hub id, or a local folder in the hub's parquet layout."""

    name: str
    files: tuple[tuple[str, str], ...] | None = None  # (split, parquet glob); None = hub

    @property
    def is_local(self) -> bool:
        return self.files is not None

    @property
    def data_files(self) -> dict[str, str]:
        return dict(self.files or ())

    def only(self, *splits: str) -> "Source":
        """The same source with only `splits` (a command that reads one split checks only that one)."""
        return self if self.files is None else Source(self.name, tuple(f for f in self.files if f[0] in splits))


def _split_files(folder: Path, split: str) -> str | None:
    flat = folder / f"{split}.parquet"
    if flat.is_file():
        return str(flat)
    sharded = sorted((folder / "data").glob(f"{split}-*.parquet"))
    return str(folder / "data" / f"{split}-*.parquet") if sharded else None


def looks_like_path(data: str) -> bool:
    """A local path, not a hub id (`owner/name` or `name`): it starts like a path, exists, has more
    than two parts, or its first part is a local folder (a mistyped `data/eurosat` must not be
    sent to the Hub)."""
    if data.startswith((".", "/", "~")) or Path(data).expanduser().exists():
        return True
    parts = Path(data).parts
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


def resolve_source(data: str = HUB_DATASET, splits: tuple[str, ...] = ("train", "test")) -> Source:
    """A hub id, or a path: a local folder with `<split>.parquet` or the hub's `data/<split>-*.parquet`.

    `$EUROSAT_DATA` is applied by the caller (RunConfig, the CLIs), never here, so that
    clients use exactly the source the server chose.
    """
    if not looks_like_path(data):
        return Source(name=data)
    folder = Path(data).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise DataError(f"data: {folder} is a file, not a folder (give the folder that holds train.parquet and test.parquet)")
    if not folder.is_dir():
        raise DataError(f"data: folder {folder} does not exist (set `data` or ${DATA_ENV})")
    files = {}
    for split in splits:
        found = _split_files(folder, split)
        if found is None:
            raise DataError(
                f"data: {folder} has no parquet files for split '{split}' "
                f"(expected {split}.parquet or data/{split}-*.parquet)"
            )
        files[split] = found
    # Optional splits (e.g. validation for calibration) are picked up when present.
    for split in ("train", "test", "validation"):
        if split not in files and (found := _split_files(folder, split)):
            files[split] = found
    return Source(name=str(folder), files=tuple(sorted(files.items())))


def _partitioner(kind: str, num_partitions: int, alpha: float, seed: int):
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if kind == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if kind == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=DIRICHLET_MIN_PARTITION,
            self_balancing=False,
            seed=seed,
        )
    raise ValueError(f"partitioner: unknown value {kind!r}; allowed: {', '.join(PARTITIONERS)}")


def federated_dataset(source: Source, partitioner: str, num_partitions: int, alpha: float, seed: int):
    from flwr_datasets import FederatedDataset

    part = _partitioner(partitioner, num_partitions, alpha, seed)
    if source.is_local:
        return FederatedDataset(
            dataset="parquet", data_files=source.data_files, partitioners={"train": part}, seed=seed
        )
    return FederatedDataset(dataset=source.name, partitioners={"train": part}, seed=seed)


def decode(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a `datasets` split of EuroSAT into (uint8 N×3×64×64 images, int64 labels)."""
    from datasets import Image as ImageFeature

    raw = dataset.cast_column("image", ImageFeature(decode=False))
    images = np.stack(
        [np.asarray(Image.open(io.BytesIO(item["bytes"])).convert("RGB")) for item in raw["image"]]
    )
    labels = torch.as_tensor(np.asarray(raw["label"], dtype=np.int64))
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels


@dataclass
class TensorData:
    """Decoded images (uint8 NCHW) and labels; normalisation happens per batch."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
        device: torch.device | str = "cpu", augment: Callable | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised float batches; `augment(uint8 images, generator)` runs before normalisation."""
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        order = order.to(self.images.device)  # data already on the device is indexed there (no copy per batch)
        for idx in order.split(batch_size):
            images = self.images[idx].to(device)
            if augment is not None:
                images = augment(images, generator)
            yield normalize(images).contiguous(memory_format=memory_format), self.labels[idx].to(device)

    def to(self, device: torch.device | str) -> "TensorData":
        """The same data on `device`, still uint8 (a client's partition moves there once per process)."""
        device = torch.device(device)
        if self.images.device == device:
            return self
        return TensorData(self.images.to(device), self.labels.to(device))

    def take(self, n: int, seed: int = 0) -> "TensorData":
        """A seeded random subset of n samples (all if n >= len)."""
        if n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        idx = idx.to(self.images.device)
        return TensorData(self.images[idx], self.labels[idx])


def normalize(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255.0 - 0.5) / 0.5


_CACHE: dict[tuple, object] = {}


def _cached(key: tuple, build):
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def load_client_data(
    source: Source, partition_id: int, num_partitions: int, partitioner: str = "iid",
    alpha: float = 0.5, seed: int = 42, test_fraction: float = 0.0,
) -> tuple[TensorData, TensorData]:
    """A client's partition of `train`: all of it for training, or (test_fraction > 0) split into
    local train/test with the run seed, for client-side evaluation."""

    def build() -> tuple[TensorData, TensorData]:
        partition = federated_dataset(source, partitioner, num_partitions, alpha, seed).load_partition(partition_id, "train")
        if test_fraction <= 0:
            images, labels = decode(partition)
            return TensorData(images, labels), TensorData(images[:0], labels[:0])
        split = partition.train_test_split(test_size=test_fraction, seed=seed)
        return TensorData(*decode(split["train"])), TensorData(*decode(split["test"]))

    return _cached(("client", source, partition_id, num_partitions, partitioner, alpha, seed, test_fraction), build)


def partition_sizes(source: Source, partitioner: str, num_partitions: int, alpha: float = 0.5,
                    seed: int = 42) -> tuple[int, ...]:
    """The number of `train` rows in each partition, as the clients' partitioner gives them (the
    server bounds each client's `num-examples` claim by it). Reads indices only, decodes no image.
    A split the partitioner cannot make, or one with an empty partition, is a one-line DataError
    (checked before anything starts: in the clients it would fail every round)."""

    def build() -> tuple[int, ...]:
        with _quiet_datasets():  # a check before the run: its one line, not the cache's progress bars
            return _sizes()

    def _sizes() -> tuple[int, ...]:
        fds = federated_dataset(source, partitioner, num_partitions, alpha, seed)
        try:
            rows = len(fds.load_split("train"))
        except Exception as exc:  # noqa: BLE001 - see _hub_split
            if source.is_local:
                raise
            raise hub_error(source.name, "train", exc) from None
        if rows < num_partitions:
            raise DataError(f"partitioner: {rows} train rows cannot fill {num_partitions} partitions (num-supernodes): "
                            f"the smallest would be empty; lower num-supernodes to at most {rows}")
        try:
            with warnings.catch_warnings():  # the Dirichlet partitioner warns on every redraw
                warnings.simplefilter("ignore", UserWarning)
                sizes = tuple(len(fds.load_partition(p, "train")) for p in range(num_partitions))
        except ValueError:  # flwr-datasets' Dirichlet partitioner gives up after 10 draws
            raise DataError(f"partitioner: dirichlet at dirichlet-alpha {alpha:g} cannot split {rows} train rows into "
                            f"{num_partitions} partitions of at least {DIRICHLET_MIN_PARTITION} each ({rows / num_partitions:.1f} "
                            "a partition on average; 10 draws tried); raise dirichlet-alpha or lower num-supernodes") from None
        if min(sizes) < 1:
            raise DataError(f"partitioner: {partitioner} over {num_partitions} clients leaves partition "
                            f"{sizes.index(min(sizes))} empty ({sum(sizes)} train rows in all); lower num-supernodes")
        return sizes

    return _cached(("sizes", source, partitioner, num_partitions, alpha, seed), build)


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """`datasets` without its progress bars ("Generating train split ...") and the Hub client
    without its retry lines (an offline node: ten lines before the one that matters), restored after."""
    import datasets
    from huggingface_hub.utils import logging as hub_logging

    was, verbosity = datasets.is_progress_bar_enabled(), hub_logging.get_verbosity()
    datasets.disable_progress_bars()
    hub_logging.set_verbosity_error()
    try:
        yield
    finally:
        hub_logging.set_verbosity(verbosity)
        if was:
            datasets.enable_progress_bars()


def _hub_split(name: str, split: str):
    """A split from the Hugging Face Hub; an id that does not exist, or no network (compute nodes
    are often offline), is a one-line DataError instead of the `datasets` traceback."""
    from datasets import load_dataset

    try:
        return load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises ConnectionError, FileNotFoundError, DatasetNotFoundError, ...
        raise hub_error(name, split, exc) from None


def hub_error(name: str, split: str, exc: BaseException) -> DataError:
    """The one line for a Hub id that cannot be read (no such dataset, or no network)."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return DataError(f"data: cannot load {name!r} split '{split}' from the Hugging Face Hub ({reason}); "
                     "offline, give a local parquet folder (`data` or $EUROSAT_DATA)")


def raw_split(source: Source, split: str):
    """A split as a `datasets.Dataset`, its images still encoded."""
    if not source.is_local:
        return _hub_split(source.name, split)
    if split not in source.data_files:
        raise DataError(f"data: {source.name} has no '{split}' split")
    from datasets import load_dataset

    return load_dataset("parquet", data_files={split: source.data_files[split]}, split=split)


def load_split(source: Source, split: str = "test", sample: int | None = None, seed: int = 0) -> TensorData:
    """A split (server-side evaluation), decoded once per process; `sample` = a seeded random
    subset, chosen before decoding (calibration needs 1,024 images, not 21,600)."""

    def build() -> TensorData:
        ds = raw_split(source, split)
        if sample is not None and sample < len(ds):
            ds = ds.shuffle(seed=seed).select(range(sample))
        return TensorData(*decode(ds))

    return _cached(("split", source, split, sample, seed), build)
