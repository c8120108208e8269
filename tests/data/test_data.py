import pytest
from conftest import SHARED_DATA

from eurosat.data.loading import DataError, federated_dataset, load_client_data, load_split, resolve_source

TANGANKE_NAMES = [
    "annual crop land", "forest", "brushland or shrubland", "highway or road",
    "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
    "residential buildings or homes or apartments", "river", "lake or sea",
]
needs_real = pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"real EuroSAT not at {SHARED_DATA}")


def _paths(partition) -> list[str]:
    from datasets import Image

    return [img["path"] for img in partition.cast_column("image", Image(decode=False))["image"]]


@needs_real
@pytest.mark.parametrize("kind", ["iid", "dirichlet"])
def test_partitions_cover_train_disjointly(kind):
    fds = federated_dataset(resolve_source(str(SHARED_DATA)), kind, 10, 0.5, 42)
    parts = [_paths(fds.load_partition(i, "train")) for i in range(10)]
    sizes = [len(p) for p in parts]
    flat = [p for part in parts for p in part]
    assert sum(sizes) == 21_600
    assert len(set(flat)) == len(flat), "a sample is in two partitions"
    if kind == "iid":
        assert sizes == [2160] * 10
    else:
        assert len(set(sizes)) > 1, "dirichlet partitions should differ in size"


@needs_real
def test_offline_source_has_hub_features():
    from datasets import ClassLabel, Image

    fds = federated_dataset(resolve_source(str(SHARED_DATA)), "iid", 10, 0.5, 42)
    features = fds.load_split("test").features
    assert isinstance(features["image"], Image)
    assert isinstance(features["label"], ClassLabel) and features["label"].names == TANGANKE_NAMES


def test_client_trains_on_its_whole_partition_or_holds_out_a_test_part(small_data):
    source = resolve_source(str(small_data))
    whole, none = load_client_data(source, 0, 3)
    assert len(whole) == 400 and len(none) == 0
    train, test = load_client_data(source, 0, 3, test_fraction=0.2)  # client evaluation on: 80/20
    assert len(train) + len(test) == 400 and len(test) == 80
    assert train.images.dtype.is_floating_point is False and tuple(train.images.shape[1:]) == (3, 64, 64)
    images, labels = next(train.batches(16))
    assert images.dtype.is_floating_point and -1.0 <= images.min() and images.max() <= 1.0
    assert len(load_split(resolve_source(str(small_data)), "test")) == 300


def test_folder_without_parquet_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no parquet files for split 'train'"):
        resolve_source(str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        resolve_source(str(tmp_path / "missing"))
