"""``origin recommender train|evaluate`` on the embedded catalog."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from origin.catalog import Catalog, EventRecord, RecommenderCatalog, upgrade
from origin.cli import main
from origin.trainer import LEASE
from recommender import SyntheticConfig, generate


async def _seed(data_dir: Path, *, lease_holder: str | None = None, newcomers: int = 0) -> None:
    """300 synthetic users; ``newcomers`` more users whose five events are all later than
    every synthetic one, so a time split holds them out with no training events."""
    catalog = Catalog.connect(f"sqlite+aiosqlite:///{data_dir / 'catalog.sqlite'}")
    await upgrade(catalog.engine)
    rcatalog = RecommenderCatalog(catalog.engine)
    data = generate(SyntheticConfig(n_users=300, n_items=100, n_events=6000, communities=4))
    events = [
        EventRecord(uuid.uuid4(), e.user, uuid.UUID(str(e.asset)), e.kind, 1.0, e.at)
        for e in data.events()
    ]
    # Newcomers take five of the ten most taken assets, as new users of a catalog tend to.
    top = np.argsort(-np.bincount(data.columns.item, minlength=len(data.columns.item_ids)))[:10]
    top_assets = [uuid.UUID(str(data.columns.item_ids[i])) for i in top]
    last = max(e.at for e in events)
    events += [
        EventRecord(uuid.uuid4(), f"newcomer{i}", top_assets[(i + j) % 10], "download", 1.0,
                    last + timedelta(minutes=i + 1))
        for i in range(newcomers)
        for j in range(5)
    ]  # fmt: skip
    await rcatalog.add_events(events)
    if lease_holder is not None:
        assert await rcatalog.acquire_lease(LEASE, lease_holder, ttl=600)
    await catalog.close()


def test_train_and_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    asyncio.run(_seed(data_dir))
    assert main(["--data-dir", str(data_dir), "recommender", "train"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model ")
    assert "6000 events" in out
    assert main(["--data-dir", str(data_dir), "recommender", "evaluate", "-k", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "model", "split", "users", "precision@5", "recall@5", "ndcg@5", "coverage",
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[1:3]] == ["als", "popularity"]
    assert lines[3].startswith("ALS / popularity, precision@5: ")


def test_train_is_refused_while_another_holds_the_lease(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    asyncio.run(_seed(data_dir, lease_holder="some-other-node"))
    assert main(["--data-dir", str(data_dir), "recommender", "train"]) == 1
    assert "some-other-node" in capsys.readouterr().err


def test_evaluate_ranks_users_without_training_events_as_served(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 300 newcomers x 5 events are the last fifth of 7,500, so the default time split (0.2)
    # cuts just before them: every test user is a newcomer, whom serving answers with the
    # popularity ranking. Scored by their zero ALS factors instead, the lift was far below 1.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    asyncio.run(_seed(data_dir, newcomers=300))
    assert main(["--data-dir", str(data_dir), "recommender", "evaluate"]) == 0
    lines = capsys.readouterr().out.splitlines()
    als, popularity = (line.split() for line in lines[1:3])
    assert [als[0], popularity[0]] == ["als", "popularity"]
    assert als[2:] == popularity[2:], lines  # users, precision, recall, ndcg, coverage
    assert lines[3] == "ALS / popularity, precision@10: 1.00x"
    assert lines[4] == (
        "300 of 300 test users have no training events: "
        "both rows rank them by popularity, as serving does"
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["-k", "0"], "argument -k: must be at least 1, not 0"),
        (["-k", "-1"], "argument -k: must be at least 1, not -1"),
        (["--max-users", "0"], "argument --max-users: must be at least 1, not 0"),
        (["--max-users", "-1"], "argument --max-users: must be at least 1, not -1"),
        *(
            (["--test-fraction", value], "argument --test-fraction: must be between 0 and 1")
            for value in ("0", "1", "1.5", "-0.2", "nan")
        ),
    ],
)
def test_evaluate_rejects_bad_arguments(
    tmp_path: Path, arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--data-dir", str(tmp_path), "recommender", "evaluate", *arguments])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"origin recommender evaluate: error: {message}" in captured.err
    assert not (tmp_path / "catalog.sqlite").exists()  # refused before anything was opened
