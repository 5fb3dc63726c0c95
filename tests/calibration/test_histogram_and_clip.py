import numpy as np
import pytest

from nbquant.calibration import clip_methods
from nbquant.calibration.histogram import CHUNK, HistogramObserver
from nbquant.errors import NotFittedError
from nbquant.quantize.numerics import INT8


def test_streaming_histogram_keeps_all_counts_and_extremes():
    rng = np.random.default_rng(0)
    batches = [rng.normal(0, 1, 1000), rng.normal(0, 3, 1000), rng.normal(5, 1, 1000)]
    obs = HistogramObserver(bins=512).fit(batches)
    counts, edges = obs.histogram
    everything = np.concatenate(batches)
    assert counts.sum() == pytest.approx(3000)
    assert obs.min_ == pytest.approx(everything.min()) and obs.max_ == pytest.approx(everything.max())
    assert edges[0] <= everything.min() and edges[-1] >= everything.max()
    # re-binning keeps the distribution: the median is within a few bins of the true one
    cdf = np.cumsum(counts) / counts.sum()
    median = edges[np.searchsorted(cdf, 0.5)]
    assert median == pytest.approx(np.median(everything), abs=4 * (edges[1] - edges[0]))


def test_histogram_of_many_chunks_counts_every_value_in_its_bin():
    x = np.random.default_rng(1).normal(size=3 * CHUNK + 17).astype(np.float32)
    obs = HistogramObserver(bins=64).partial_fit(x)
    counts, edges = obs.histogram
    expected = np.bincount(np.clip(((x - np.float32(edges[0])) * np.float32(64 / (edges[-1] - edges[0])))
                                   .astype(np.int64), 0, 63), minlength=64)
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == x.size


def test_a_large_batch_bins_a_sample_but_keeps_its_exact_range():
    x = np.random.default_rng(2).normal(size=10_000).astype(np.float32)
    x[1] = 9.0  # not in the sample of every 3rd value: the range still reaches it
    sampled = HistogramObserver(bins=64, sample=3000).partial_fit(x)
    assert sampled.count_ == x[::3].size and sampled.counts_.sum() == x[::3].size
    assert sampled.max_ == 9.0 and sampled.edges_[-1] >= 9.0
    whole = HistogramObserver(bins=64, sample=3000).partial_fit(x[:5999])  # under 2 * sample: every value
    assert whole.count_ == 5999
    cdf = np.cumsum(sampled.counts_) / sampled.count_
    median = sampled.edges_[np.searchsorted(cdf, 0.5)]
    assert median == pytest.approx(np.median(x), abs=2 * (sampled.edges_[1] - sampled.edges_[0]))


def test_histogram_ignores_nan_and_inf():
    obs = HistogramObserver(bins=16).partial_fit(np.array([0.0, 1.0, np.nan, np.inf]))
    assert obs.count_ == 2 and obs.max_ == 1.0


def test_unfitted_histogram_raises():
    with pytest.raises(NotFittedError, match="partial_fit"):
        _ = HistogramObserver().histogram


@pytest.fixture
def relu_like():
    rng = np.random.default_rng(1)
    x = np.maximum(rng.normal(0, 1, 200_000), 0)
    x[:3] = 40.0  # three far outliers
    return HistogramObserver().fit([x])


def test_minmax_keeps_outliers(relu_like):
    counts, edges = relu_like.histogram
    lo, hi = clip_methods.minmax_range(counts, edges, observed=(relu_like.min_, relu_like.max_))
    assert (lo, hi) == (0.0, 40.0)


@pytest.mark.parametrize("method", ["kl", "percentile"])
def test_clipping_methods_cut_far_outliers(relu_like, method):
    counts, edges = relu_like.histogram
    lo, hi = clip_methods.METHODS[method](counts, edges, observed=(relu_like.min_, relu_like.max_))
    assert lo == 0.0
    assert 2.0 < hi < 20.0


def test_mse_clips_a_heavy_tail_and_beats_minmax_on_its_error():
    x = np.random.default_rng(3).exponential(1.0, 200_000)
    obs = HistogramObserver().fit([x])
    counts, edges = obs.histogram
    lo, hi = clip_methods.mse_range(counts, edges, observed=(obs.min_, obs.max_))
    assert lo == 0.0 and hi < 0.95 * obs.max_  # the range always holds zero
    full = clip_methods.clip_error(counts, edges, obs.min_, obs.max_)
    assert clip_methods.clip_error(counts, edges, lo, hi) < full


def test_symmetric_mse_on_signed_data():
    x = np.random.default_rng(2).laplace(0, 1, 100_000)
    obs = HistogramObserver().fit([x])
    lo, hi = clip_methods.mse_range(*obs.histogram, INT8, True)
    assert lo < 0 < hi and hi < obs.max_
