"""Recommender on small hand-made data with known answers (no server, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import numpy as np
import pytest

from recommender import (
    ALSConfig,
    Event,
    InteractionConfig,
    Model,
    Recommender,
    build_interactions,
    encode_events,
    evaluate_split,
    load_model,
    model_from_bytes,
    model_to_bytes,
    save_model,
    split_by_time,
    train,
)

T0 = datetime(2025, 3, 1, tzinfo=UTC)
A = [f"a{i}" for i in range(8)]  # community A
B = [f"b{i}" for i in range(8)]  # community B
# Two planted communities need few factors; strong regularisation keeps ALS from memorising
# 22 individual users, and more iterations than the default let such a small problem settle.
ALS = ALSConfig(factors=4, regularization=5.0, alpha=10.0, iterations=30, num_threads=1, seed=0)


def _events() -> list[Event]:
    """Ten users per community, each taking 5 of its 8 assets (rotating), plus alice (a0, a1)
    and bob (a0, a1). a0/b0 are taken by everyone in their community, so they lead popularity."""
    events = []
    for group, assets in (("A", A), ("B", B)):
        for u in range(10):
            taken = {assets[0], *(assets[(u + j) % 7 + 1] for j in range(4))}
            for asset in sorted(taken):
                events.append(Event(f"{group}{u}", asset, "download", None, T0))
    # a0 one step ahead of b0 so the popularity order is known.
    events.append(Event("A0", A[0], "like", None, T0))
    for user in ("alice", "bob"):
        events += [Event(user, A[0], "download", None, T0), Event(user, A[1], "use", None, T0)]
    return events


@pytest.fixture(scope="module")
def model() -> Model:
    return train(build_interactions(_events()), ALS, trained_at=T0.timestamp())


@pytest.fixture
def rec(model: Model) -> Recommender:
    return Recommender(model)


def _group(ids: list[str]) -> set[str]:
    return {asset[0] for asset in ids}


def test_user_of_one_group_gets_that_group_first(rec: Recommender) -> None:
    result = rec.recommend("alice", n=6)
    assert not result.fallback
    # alice has a0 and a1; the six other A assets must fill her top six.
    assert set(result.ids) == set(A[2:])
    scores = [score for _, score in result]
    assert scores == sorted(scores, reverse=True)
    # With more slots than A has left, B only comes after all of A.
    longer = rec.recommend("alice", n=10).ids
    assert _group(longer[:6]) == {"a"}
    assert _group(longer[6:]) == {"b"}


def test_owned_assets_are_excluded_unless_asked(rec: Recommender) -> None:
    assert not {"a0", "a1"} & set(rec.recommend("alice", n=16).ids)
    assert {"a0", "a1"} <= set(rec.recommend("alice", n=16, exclude_owned=False).ids)


def test_one_new_event_changes_the_list_at_once(rec: Recommender) -> None:
    before = rec.recommend("bob", n=4)
    assert _group(before.ids) == {"a"}
    assert rec.add_events([Event("bob", "b3", "like", None, T0 + timedelta(minutes=1))]) == 1
    after = rec.recommend("bob", n=4)
    assert not after.fallback
    assert after.ids != before.ids
    assert "b3" not in after.ids  # now owned
    assert "b" in _group(after.ids)  # a like outweighs his two A events: B moves up
    # Other users are untouched.
    assert rec.recommend("alice", n=4).ids == Recommender(rec.model).recommend("alice", n=4).ids


def test_recent_argument_is_fold_in_without_state(rec: Recommender) -> None:
    recent = [Event("bob", "b3", "like", None, T0 + timedelta(minutes=1))]
    with_recent = rec.recommend("bob", n=4, recent=recent)
    assert "b" in _group(with_recent.ids)
    assert _group(rec.recommend("bob", n=4).ids) == {"a"}  # nothing was remembered
    with pytest.raises(ValueError, match="expected"):
        rec.recommend("alice", recent=recent)


def test_fold_in_serves_a_user_unknown_to_the_model(rec: Recommender) -> None:
    rec.add_events([Event("carol", "b1", "use", None, T0 + timedelta(hours=1))])
    result = rec.recommend("carol", n=5)
    assert not result.fallback
    assert _group(result.ids) == {"b"}
    assert "b1" not in result.ids


def test_unknown_user_gets_popularity_with_fallback(rec: Recommender, model: Model) -> None:
    result = rec.recommend("nobody", n=3)
    assert result.fallback
    assert result.ids[0] == "a0"  # taken by all of A plus alice, bob and one like
    expected = [model.item_ids[i] for i in np.argsort(-model.popularity, kind="stable")[:3]]
    assert result.ids[0] == expected[0]
    assert rec.popular(3).ids == result.ids


def test_events_on_assets_the_model_never_saw_reach_popularity(rec: Recommender) -> None:
    later = T0 + timedelta(days=1)
    rec.add_events(Event(f"fan{i}", "fresh", "like", None, later) for i in range(20))
    assert rec.popular(1).ids == ["fresh"]
    # A user whose only event is on an unseen asset cannot be folded in: popularity, minus it.
    result = rec.recommend("fan0", n=3)
    assert result.fallback
    assert "fresh" not in result.ids
    # And similar() of an asset the model has not seen falls back too, without itself.
    similar = rec.similar("fresh", n=3)
    assert similar.fallback
    assert "fresh" not in similar.ids


def test_deleted_assets_never_appear(rec: Recommender) -> None:
    rec.mark_deleted(["a2", "a3", "b0", "fresh"])
    rec.add_events(Event(f"fan{i}", "fresh", "like", None, T0) for i in range(50))
    gone = {"a2", "a3", "b0", "fresh"}
    users = ["alice", "bob", "A1", "B1", "nobody"]
    for user in users:
        assert not gone & set(rec.recommend(user, n=20).ids)
        assert not gone & set(rec.recommend(user, n=20, exclude_owned=False).ids)
    for result in rec.recommend_batch(users, n=20):
        assert not gone & set(result.ids)
    for asset in ["a0", "b1", "unknown"]:
        assert not gone & set(rec.similar(asset, n=20).ids)
    assert not gone & set(rec.popular(20).ids)
    rec.unmark_deleted(["a2"])
    assert "a2" in rec.recommend("alice", n=20).ids
    rec.set_deleted(["a4"])
    ids = rec.recommend("alice", n=20).ids
    assert "a4" not in ids
    assert "a3" in ids


def test_kind_filter(rec: Recommender) -> None:
    kinds = {asset: ("avatar" if int(asset[1]) % 2 else "scene") for asset in A + B}
    rec.set_asset_kinds(kinds)
    avatars = rec.recommend("alice", n=20, kind="avatar").ids
    assert avatars
    assert all(kinds[a] == "avatar" for a in avatars)
    assert _group(avatars[:3]) == {"a"}  # a3, a5, a7: alice's own group first
    assert all(kinds[a] == "scene" for a in rec.similar("a0", n=20, kind="scene").ids)
    assert all(kinds[a] == "avatar" for a in rec.popular(20, kind="avatar").ids)
    assert all(kinds[a] == "scene" for a in rec.recommend("nobody", 20, kind="scene").ids)
    assert len(rec.recommend("alice", n=20, kind="sound")) == 0
    rec.update_asset_kinds({"a3": "sound"})
    assert rec.recommend("alice", n=20, kind="sound").ids == ["a3"]


def test_similar_returns_same_community(rec: Recommender) -> None:
    for asset, group in (("a2", "a"), ("b5", "b")):
        result = rec.similar(asset, n=6)
        assert not result.fallback
        assert asset not in result.ids
        assert _group(result.ids) == {group}


def test_batch_matches_single(rec: Recommender) -> None:
    rec.add_events([Event("bob", "b3", "like", None, T0)])
    users = ["alice", "bob", "A3", "B4", "nobody"]
    batch = rec.recommend_batch(users, n=5)
    for user, result in zip(users, batch, strict=True):
        single = rec.recommend(user, n=5)
        assert result.ids == single.ids
        assert result.fallback == single.fallback
        assert [s for _, s in result] == pytest.approx([s for _, s in single], rel=1e-4)


def test_uuid_asset_ids_are_their_string() -> None:
    asset = UUID("12345678-1234-5678-1234-567812345678")
    events = [Event(f"u{i}", asset, "download", None, T0) for i in range(3)]
    events += [Event("u0", "other", "download", None, T0)]
    model = train(build_interactions(events), ALS)
    rec = Recommender(model, deleted=[asset])
    assert str(asset) in model.item_index
    assert str(asset) not in rec.popular(5).ids


def test_with_model_keeps_caller_state(rec: Recommender, model: Model) -> None:
    rec.set_asset_kinds({"a5": "avatar"})
    rec.mark_deleted(["a6"])
    rec.add_events([Event("dave", "b2", "like", None, T0 + timedelta(hours=2))])
    swapped = rec.with_model(model)
    assert swapped.recommend("alice", n=20, kind="avatar").ids == ["a5"]
    assert "a6" not in swapped.recommend("alice", n=20).ids
    assert not swapped.recommend("dave", n=3).fallback
    assert swapped.stats()["pending_events"] == 1


def test_save_load_round_trip_gives_identical_recommendations(model: Model, tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    save_model(model, path)
    copies = [
        model_from_bytes(model_to_bytes(model)),
        load_model(path),
        load_model(path, use_mmap=True),
    ]
    users = [*model.user_ids, "nobody"]
    original = Recommender(model)
    for copy in copies:
        assert copy.meta == model.meta
        assert list(copy.user_ids) == list(model.user_ids)
        assert list(copy.item_ids) == list(model.item_ids)
        assert np.array_equal(copy.user_factors, model.user_factors)
        assert np.array_equal(copy.item_factors, model.item_factors)
        assert np.array_equal(copy.popularity, model.popularity)
        for part in ("indptr", "indices", "data"):
            assert np.array_equal(getattr(copy.user_items, part), getattr(model.user_items, part))
        loaded = Recommender(copy)
        for user in users:
            assert loaded.recommend(user, n=8) == original.recommend(user, n=8)
        for asset in model.item_ids:
            assert loaded.similar(asset, n=5) == original.similar(asset, n=5)


def test_load_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a recommender model"):
        model_from_bytes(b"PK\x03\x04 definitely a zip")
    data = bytearray(model_to_bytes(train(build_interactions(_events()[:5]), ALS)))
    with pytest.raises(ValueError, match="model file"):
        model_from_bytes(bytes(data[: len(data) // 2]))


def test_decay_and_kind_weights() -> None:
    day = 86_400.0
    config = InteractionConfig({"download": 1.0, "like": 4.0}, half_life_seconds=day)
    events = [
        Event("u", "x", "download", None, T0),
        Event("u", "x", "download", None, T0 - timedelta(days=1)),  # half
        Event("u", "y", "like", 0.5, T0 - timedelta(days=2)),  # 4 * 0.5 * 1/4
        Event("u", "z", "share", None, T0),  # kind not configured
        Event("v", "x", "download", None, T0 + timedelta(days=1)),  # after reference: full
    ]
    built = build_interactions(events, config, reference_time=T0)
    u, x, y = built.user_index["u"], built.item_index["x"], built.item_index["y"]
    assert built.matrix[u, x] == pytest.approx(1.5)
    assert built.matrix[u, y] == pytest.approx(0.5)
    assert built.matrix[built.user_index["v"], x] == pytest.approx(1.0)
    assert built.ignored_events == 1
    assert built.n_events == 4
    assert built.matrix[u, built.item_index["z"]] == 0


def test_model_without_interactions_still_serves() -> None:
    built = build_interactions([Event("u", "x", "share", None, T0)])
    rec = Recommender(train(built, ALS))
    result = rec.recommend("u", 5)
    assert result.fallback
    assert len(result) == 0
    rec.add_events([Event("v", "x", "download", None, T0)])
    assert rec.recommend("u", 5).ids == ["x"]


def _with_newcomers(newcomers: int) -> list[Event]:
    """``_events()`` at T0 plus users first seen a day later, each taking a0, b0 and b1: the
    time split at T0 holds out their pairs (and only theirs), with no training row for them."""
    later = T0 + timedelta(days=1)
    return _events() + [
        Event(f"new{i}", asset, "download", None, later)
        for i in range(newcomers)
        for asset in (A[0], B[0], B[1])
    ]


def test_evaluation_ranks_users_without_training_events_by_popularity() -> None:
    # As serving does: a user with no training row gets the popularity ranking, so over
    # newcomers only the "als" row is the popularity row (it was a ranking by zero factors).
    columns = encode_events(_with_newcomers(6))
    split = split_by_time(columns, InteractionConfig(), cutoff=T0.timestamp())
    evaluation = evaluate_split(split, ALS, k=3)
    als, popularity = evaluation.rows
    assert als.users == popularity.users == 6
    assert (als.precision, als.recall, als.ndcg, als.coverage) == (
        popularity.precision, popularity.recall, popularity.ndcg, popularity.coverage,
    )  # fmt: skip
    assert als.precision == pytest.approx(2 / 3)  # a0 and b0 lead popularity
    assert evaluation.lift("precision") == pytest.approx(1.0)
    assert evaluation.cold_users == 6


def test_evaluation_counts_cold_users_among_warm_ones() -> None:
    events = _with_newcomers(4) + [
        Event(f"A{u}", A[7], "download", None, T0 + timedelta(days=1)) for u in range(3)
    ]
    split = split_by_time(encode_events(events), InteractionConfig(), cutoff=T0.timestamp())
    evaluation = evaluate_split(split, ALS, k=3)
    assert [row.users for row in evaluation.rows] == [7, 7]
    assert evaluation.cold_users == 4


@pytest.mark.parametrize(("k", "max_users"), [(0, 10), (-1, 10), (3, 0), (3, -1)])
def test_evaluation_rejects_empty_cutoffs_and_user_samples(k: int, max_users: int) -> None:
    split = split_by_time(
        encode_events(_with_newcomers(2)), InteractionConfig(), cutoff=T0.timestamp()
    )
    with pytest.raises(ValueError, match=r"^(k|max_users) must be at least 1"):
        evaluate_split(split, ALS, k=k, max_users=max_users)
