"""Property tests for the interactions builder: any event list gives a consistent matrix."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from uuid import UUID

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from recommender import Event, InteractionConfig, build_interactions
from recommender.events import asset_key
from recommender.scoring import InnerProductIndex, top_n, top_n_rows

KIND_WEIGHTS = {"download": 1.0, "use": 2.5, "like": 4.0}
BASE = datetime(2025, 1, 1, tzinfo=UTC)

users = st.sampled_from(["u0", "u1", "ü-2", "user with space", "3"])
assets = st.one_of(
    st.sampled_from(["a", "b", "c", "ü"]),
    st.sampled_from([UUID(int=1), UUID(int=2)]),
)
events = st.lists(
    st.builds(
        Event,
        user=users,
        asset=assets,
        kind=st.sampled_from([*KIND_WEIGHTS, "share"]),  # "share" is not configured
        weight=st.one_of(st.none(), st.floats(0, 100, allow_nan=False), st.just(5e-324)),
        at=st.integers(0, 30 * 86_400).map(lambda s: BASE + timedelta(seconds=s)),
    ),
    max_size=60,
)


def _expected(
    event_list: list[Event], config: InteractionConfig, reference: float
) -> dict[tuple[str, str], float]:
    sums: dict[tuple[str, str], float] = defaultdict(float)
    for e in event_list:
        if e.kind not in config.kind_weights:
            continue
        # The per-event multiplier is kept as float32 (EventColumns.weight), so a multiplier
        # below float32's smallest value counts as zero, however large its kind's weight (and
        # the pair is then stored as the smallest normal float32).
        multiplier = 1.0 if e.weight is None else float(np.float32(e.weight))
        weight = config.kind_weights[e.kind] * multiplier
        if config.half_life_seconds is not None:
            age = max(reference - e.at.timestamp(), 0.0)
            weight *= 0.5 ** (age / config.half_life_seconds)
        sums[(e.user, asset_key(e.asset))] += weight
    return sums


@settings(max_examples=200, deadline=None)
@given(events, st.sampled_from([None, 86_400.0, 7 * 86_400.0]))
# Found by hypothesis: a multiplier that float32 rounds to zero, under a kind weight that
# would have lifted it above float32's smallest value in float64.
@example([Event("u0", "a", "use", 5.454600192558618e-46, BASE)], None)
def test_builder_is_consistent(event_list: list[Event], half_life: float | None) -> None:
    config = InteractionConfig(KIND_WEIGHTS, half_life_seconds=half_life)
    built = build_interactions(event_list, config)
    matrix = built.matrix

    # Shape and id maps agree, both directions, and cover exactly the ids in the events.
    assert matrix.shape == (len(built.user_ids), len(built.item_ids))
    assert matrix.dtype == np.float32
    assert all(built.user_index[u] == i for i, u in enumerate(built.user_ids))
    assert all(built.item_index[a] == i for i, a in enumerate(built.item_ids))
    assert set(built.user_ids) == {e.user for e in event_list}
    assert set(built.item_ids) == {asset_key(e.asset) for e in event_list}

    # Counts.
    ignored = sum(e.kind not in KIND_WEIGHTS for e in event_list)
    assert built.ignored_events == ignored
    assert built.n_events == len(event_list) - ignored

    # Weights: duplicates summed, kinds weighted, decay applied; nothing else stored, and every
    # pair with an event stored, however small its weight (the row says what the user has).
    reference = built.reference_time
    if event_list:
        assert reference == max(e.at.timestamp() for e in event_list)
    expected = _expected(event_list, config, reference)
    dense = matrix.toarray()
    tiny = float(np.finfo(np.float32).tiny)
    for (user, asset), weight in expected.items():
        got = dense[built.user_index[user], built.item_index[asset]]
        assert got == pytest.approx(max(weight, tiny), rel=1e-5)
    assert matrix.nnz == len(expected)
    assert np.all(matrix.data >= tiny)
    assert np.all(np.isfinite(matrix.data))
    assert math.isclose(
        float(built.popularity().sum()), sum(expected.values()), rel_tol=1e-5, abs_tol=1e-5
    )


@pytest.mark.parametrize("excluded", [0.0, 0.5, 0.999, 1.0])
@pytest.mark.parametrize("n", [1, 10, 100])
def test_top_n_rows_is_exact(excluded: float, n: int) -> None:
    """The sampled-threshold shortcut must pick exactly the n best, also with ties and -inf."""
    rng = np.random.default_rng(int(excluded * 1000) + n)
    scores = rng.normal(size=(6, 60_000)).astype(np.float32)
    scores[1] = np.round(scores[1], 1)  # heavy ties
    scores[2] = np.sort(scores[2])  # sorted: the strided sample is maximally uneven
    scores[rng.random(scores.shape) < excluded] = -np.inf
    ids, best = top_n_rows(scores, n)
    for row in range(scores.shape[0]):
        expected = np.sort(scores[row])[::-1][:n]
        np.testing.assert_array_equal(best[row], expected)
        np.testing.assert_array_equal(scores[row][ids[row]], best[row])
        finite = np.isfinite(best[row])
        assert len(set(ids[row][finite].tolist())) == int(finite.sum())
        single_ids, single_best = top_n(scores[row], n)
        np.testing.assert_array_equal(single_ids, ids[row][finite])
        np.testing.assert_array_equal(single_best, best[row][finite])


@pytest.mark.parametrize("allowed_fraction", [1.0, 0.5, 0.001, 0.0])
@pytest.mark.parametrize("n", [1, 10, 300])
def test_norm_ordered_scan_equals_full_scan(allowed_fraction: float, n: int) -> None:
    """The early-stopping scan must return exactly the full product's top n."""
    rng = np.random.default_rng(int(allowed_fraction * 1000) + n)
    size = 30_000
    # Power-law norms like ALS gives popular assets, random directions, a zero tail and
    # duplicated rows (exact score ties).
    factors = rng.normal(size=(size, 16)).astype(np.float32)
    factors *= (np.arange(1, size + 1) ** -0.8)[rng.permutation(size), None].astype(np.float32)
    factors[-100:] = 0
    factors[10:20] = factors[0]
    index = InnerProductIndex(factors)
    allowed = rng.random(size) < allowed_fraction
    vectors = [rng.normal(size=16), np.zeros(16), factors[0] * 3.0, -factors[0]]
    for vector in vectors:
        for mask in (allowed, None):
            ids, best = index.top_n(vector, n, mask)
            full = factors @ vector.astype(np.float32)
            expected = np.sort(full if mask is None else full[mask])[::-1][:n]
            np.testing.assert_allclose(best, expected, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(full[ids], best, rtol=1e-5, atol=1e-6)
            assert len(set(ids.tolist())) == len(ids)
            if mask is not None:
                assert mask[ids].all()
            assert np.all(np.diff(best) <= 0)
