"""``origin recommender train|evaluate`` on the embedded catalog."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from origin.catalog import Catalog, EventRecord, RecommenderCatalog, upgrade
from origin.cli import main
from origin.trainer import LEASE
from recommender import SyntheticConfig, generate


async def _seed(data_dir: Path, *, lease_holder: str | None = None) -> None:
    catalog = Catalog.connect(f"sqlite+aiosqlite:///{data_dir / 'catalog.sqlite'}")
    await upgrade(catalog.engine)
    rcatalog = RecommenderCatalog(catalog.engine)
    data = generate(SyntheticConfig(n_users=300, n_items=100, n_events=6000, communities=4))
    events = [
        EventRecord(uuid.uuid4(), e.user, uuid.UUID(str(e.asset)), e.kind, 1.0, e.at)
        for e in data.events()
    ]
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
