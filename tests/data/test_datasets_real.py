"""ImageDataset on the real image folder: the shared ImageNet samples read as the imagenet layout."""

import pytest

from nbquant.data.images import DatasetLayout

pytestmark = pytest.mark.real


def test_real_data_is_imagenet_layout(real_data):
    assert real_data.layout is DatasetLayout.IMAGENET
    assert len(real_data) == 1000
    assert real_data.labels.tolist() == list(range(1000))
