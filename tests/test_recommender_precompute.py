"""Precomputed top-k lists: exact against live scoring, stored with the model, filtered."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from recommender import (
    ALSConfig,
    InteractionConfig,
    Model,
    Recommender,
    SyntheticConfig,
    build_from_columns,
    generate,
    load_model,
    precompute_top,
    save_model,
    train,
)

DATA = SyntheticConfig(n_users=400, n_items=600, n_events=8000, communities=6, seed=5)


@pytest.fixture(scope="module")
def model() -> Model:
    data = generate(DATA)
    return train(
        build_from_columns(data.columns, InteractionConfig()),
        ALSConfig(factors=8, iterations=5, num_threads=1, seed=0),
    )


@pytest.mark.parametrize("prefix", [16, 600])  # 16: most rows need the exact scan
def test_lists_equal_live_scoring(model: Model, prefix: int) -> None:
    stored, stats = precompute_top(model, 20, prefix=prefix, block=64)
    assert stats.users == len(model.user_ids)
    if prefix < 600:
        assert stats.exact_scans > 0  # both paths ran
    rec = Recommender(model)
    assert stored.top_items is not None
    assert stored.top_scores is not None
    for u, user in enumerate(model.user_ids):
        live = rec.recommend(user, 20)
        got = [model.item_ids[i] for i in stored.top_items[u] if i >= 0]
        if live.fallback:  # no training row: popularity, not a stored list
            assert got == []
            continue
        assert got == live.ids, user
        assert np.allclose(stored.top_scores[u][: len(got)], [s for _, s in live], atol=1e-5)


def test_lists_survive_the_model_file_and_old_files_still_load(
    model: Model, tmp_path: Path
) -> None:
    stored, _ = precompute_top(model, 10)
    save_model(stored, tmp_path / "new.bin")
    loaded = load_model(tmp_path / "new.bin", use_mmap=True)
    assert loaded.top_k == 10
    assert stored.top_items is not None
    assert loaded.top_items is not None
    assert np.array_equal(loaded.top_items, stored.top_items)
    save_model(model, tmp_path / "old.bin")  # a model without lists, as before
    assert load_model(tmp_path / "old.bin").top_items is None
    user = model.user_ids[0]
    assert Recommender(load_model(tmp_path / "old.bin")).recommend_stored(user, 5) is None


def test_stored_answers_filter_deleted_and_kind_and_know_when_they_fall_short(
    model: Model,
) -> None:
    stored, _ = precompute_top(model, 12)
    kinds = {a: ("prop" if i % 3 else "avatar") for i, a in enumerate(model.item_ids)}
    rec = Recommender(stored, asset_kinds=kinds)
    live = Recommender(model, asset_kinds=kinds)
    user = next(u for u in model.user_ids if not live.recommend(u, 1).fallback)
    first = rec.recommend_stored(user, 5)
    assert first is not None
    assert first.ids == live.recommend(user, 5).ids
    rec.mark_deleted([first.ids[0]])
    live.mark_deleted([first.ids[0]])
    again = rec.recommend_stored(user, 5)
    assert again is not None
    assert first.ids[0] not in again.ids
    assert again.ids == live.recommend(user, 5).ids
    avatars = rec.recommend_stored(user, 2, kind="avatar")
    assert avatars is not None
    assert {kinds[a] for a in avatars.ids} == {"avatar"}
    assert avatars.ids == live.recommend(user, 2, kind="avatar").ids
    # 12 stored entries cannot give 12 after a deletion, nor 10 avatars: score live instead.
    assert rec.recommend_stored(user, 12) is None
    assert rec.recommend_stored(user, 10, kind="avatar") is None
    assert rec.recommend_stored("nobody", 5) is None
    assert rec.recommend_stored(user, 5, kind="no-such-kind") == live.recommend(
        user, 5, kind="no-such-kind"
    )


def test_a_list_shorter_than_k_is_complete() -> None:
    model = dataclasses.replace(
        train(
            build_from_columns(generate(SyntheticConfig(20, 6, 60, 2, seed=1)).columns,
                               InteractionConfig()),
            ALSConfig(factors=2, iterations=3, num_threads=1, seed=0),
        )
    )  # fmt: skip
    stored, _ = precompute_top(model, 50)
    rec = Recommender(stored)
    user = model.user_ids[0]
    answer = rec.recommend_stored(user, 50)
    assert answer is not None
    assert answer.ids == Recommender(model).recommend(user, 50).ids
