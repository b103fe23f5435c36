"""Recommender on the synthetic generator: quality against popularity, fold-in exactness."""

from __future__ import annotations

import numpy as np
import pytest

from recommender import (
    ALSConfig,
    InteractionConfig,
    Recommender,
    SyntheticConfig,
    SyntheticData,
    build_from_columns,
    evaluate_columns,
    generate,
    train,
)
from recommender.scoring import fold_in, gram

# Moderate size: big enough that ranking noise is small, small enough for a few seconds.
SYNTHETIC = SyntheticConfig(n_users=5_000, n_items=2_000, n_events=100_000, communities=10, seed=7)
ALS = ALSConfig(factors=32, regularization=0.05, alpha=10.0, iterations=10, seed=0)


@pytest.fixture(scope="module")
def data() -> SyntheticData:
    return generate(SYNTHETIC)


def test_generator_is_seeded_and_planted(data: SyntheticData) -> None:
    again = generate(SYNTHETIC)
    assert np.array_equal(again.columns.user, data.columns.user)
    assert np.array_equal(again.columns.item, data.columns.item)
    assert list(again.columns.item_ids) == list(data.columns.item_ids)
    columns = data.columns
    same = data.item_community[columns.item] == data.user_group[columns.user]
    # in_group=0.8 plus the 1/communities chance that noise lands in the right community.
    assert same.mean() == pytest.approx(0.8 + 0.2 / SYNTHETIC.communities, abs=0.01)
    counts = np.sort(np.bincount(columns.item, minlength=SYNTHETIC.n_items))[::-1]
    assert counts[0] > 20 * np.median(counts)  # power-law head


@pytest.mark.parametrize("method", ["random", "time"])
def test_als_beats_popularity_by_half_again(data: SyntheticData, method: str) -> None:
    evaluation = evaluate_columns(data.columns, InteractionConfig(), ALS, method=method, k=10)
    als, popularity = evaluation.rows
    assert (als.name, popularity.name) == ("als", "popularity")
    assert als.users > 1_000
    assert evaluation.lift("precision") >= 1.5, evaluation.table()
    assert als.ndcg > popularity.ndcg
    assert als.recall > popularity.recall
    assert als.coverage > popularity.coverage
    table = evaluation.table()
    assert table[0][:4] == ["model", "split", "users", "precision@10"]
    assert [row[0] for row in table[1:]] == ["als", "popularity"]


def test_recommendations_follow_the_planted_groups(data: SyntheticData) -> None:
    model = train(build_from_columns(data.columns, InteractionConfig()), ALS)
    rec = Recommender(model)
    rng = np.random.default_rng(0)
    users = rng.choice(SYNTHETIC.n_users, 200, replace=False)
    index = {asset: i for i, asset in enumerate(data.columns.item_ids)}
    results = rec.recommend_batch([data.columns.user_ids[u] for u in users], n=10)
    in_group = [
        np.mean([data.item_community[index[a]] == data.user_group[u] for a in r.ids])
        for u, r in zip(users, results, strict=True)
        if len(r)
    ]
    assert np.mean(in_group) > 0.8


def test_fold_in_matches_implicit_recalculate_user(data: SyntheticData) -> None:
    from implicit.cpu.als import AlternatingLeastSquares  # type: ignore[import-untyped]
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    built = build_from_columns(data.columns, InteractionConfig())
    config = ALSConfig(factors=16, regularization=0.1, alpha=5.0, iterations=3, seed=0)
    with threadpool_limits(limits=1, user_api="blas"):
        als = AlternatingLeastSquares(
            factors=16, regularization=0.1, alpha=5.0, iterations=3, random_state=0
        )
        als.fit(built.matrix, show_progress=False)
        users = np.arange(20)
        expected = als.recalculate_user(users, built.matrix[users])
    g = gram(als.item_factors, config.regularization)
    for u in users.tolist():
        row = built.matrix[u]
        ours = fold_in(als.item_factors, g, row.indices, row.data, config.alpha)
        np.testing.assert_allclose(ours, expected[u], rtol=2e-3, atol=2e-4)


def test_early_stopping_ranking_equals_full_product(data: SyntheticData) -> None:
    """recommend/recommend_batch (norm-ordered scan) give the full product's top n, with and
    without a kind filter, for users with training rows."""
    model = train(build_from_columns(data.columns, InteractionConfig()), ALS)
    kinds = {a: ("scene" if i % 7 == 0 else "model") for i, a in enumerate(model.item_ids)}
    rec = Recommender(model, asset_kinds=kinds)
    users = [u for u in range(300) if model.user_row(u)[0].size]
    names = [model.user_ids[u] for u in users]
    for kind in (None, "scene"):
        batch = rec.recommend_batch(names, n=10, kind=kind)
        for u, name, batched in zip(users, names, batch, strict=True):
            scores = model.item_factors @ model.user_factors[u]
            scores[model.user_row(u)[0]] = -np.inf
            if kind is not None:
                scores[[kinds[a] != kind for a in model.item_ids]] = -np.inf
            expected = np.sort(scores)[::-1][:10]
            single = rec.recommend(name, n=10, kind=kind)
            np.testing.assert_allclose([s for _, s in single], expected, rtol=1e-4, atol=1e-5)
            assert batched.ids == single.ids
