"""What the strict JSON reading of request bodies costs on ``POST /events`` bodies.

``origin.json_body`` parses with hooks for numbers and constants, scans the text for ``\\u``
escapes and walks the document for its depth; plain ``json.loads`` does none of that. Both are
timed here on the same bodies, interleaved, in one process: 500-event batches as
bench/recommend_http.py posts them (user, asset, kind), and the same with the optional
numbers and times (``weight``, ``at``), whose numbers go through the parser's hooks.

    flock /tmp/bench.lock .venv/bin/python bench/json_strict.py --rounds 7

Prints, per body kind, the median microseconds per event of each way and their difference;
compare that difference with the ingest CPU per event of the HTTP benchmark (docs/BENCHMARKS.md,
recommender serving and event ingestion).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from origin import json_body


def bodies(batch: int, extras: bool, count: int = 20) -> list[str]:
    rng = random.Random(1)
    assets = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(2000)]
    out = []
    for _ in range(count):
        events: list[dict[str, Any]] = []
        for _ in range(batch):
            event: dict[str, Any] = {
                "user": f"user-{rng.randrange(1_000_000):07d}",
                "asset": rng.choice(assets),
                "kind": rng.choice(("download", "use", "like")),
            }
            if extras:
                event["weight"] = round(rng.uniform(0.5, 3.0), 3)
                event["at"] = f"2026-12-04T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z"
            events.append(event)
        out.append(json.dumps({"events": events}))
    return out


def per_event_us(parse: Callable[[str], Any], texts: list[str], events: int) -> float:
    started = time.perf_counter()
    for text in texts:
        parse(text)
    return (time.perf_counter() - started) / events * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    for extras in (False, True):
        texts = bodies(args.batch, extras)
        events = len(texts) * args.batch
        assert json_body.loads_body(texts[0]) == json.loads(texts[0])
        plain_us, strict_us = [], []
        for _ in range(args.rounds):  # interleaved: the machine's drift hits both alike
            plain_us.append(per_event_us(json.loads, texts, events))
            strict_us.append(per_event_us(json_body.loads_body, texts, events))
        plain, strict_median = statistics.median(plain_us), statistics.median(strict_us)
        label = "user, asset, kind, weight, at" if extras else "user, asset, kind"
        print(
            f"{label}: json.loads {plain:.3f} us/event, strict {strict_median:.3f} us/event, "
            f"+{strict_median - plain:.3f} us/event ({args.rounds} rounds of {events} events)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
