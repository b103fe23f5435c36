"""Training: implicit's CPU ALS on an ``Interactions`` matrix, in the calling thread.

BLAS threads: implicit parallelises ALS itself (``num_threads``) and asks that BLAS stay
single-threaded, otherwise the two thread pools fight and training slows down several times.
We pin it with ``threadpoolctl.threadpool_limits(1, "blas")`` around model construction and
``fit`` rather than with ``OPENBLAS_NUM_THREADS``: the env var only works if set before numpy is
first imported, which a library cannot promise, while threadpoolctl changes the already loaded
OpenBLAS at run time and restores it afterwards, so the pin does not leak into the caller
(the server runs this in a worker process, tests run it in the pytest process).

We import ``implicit.cpu.als`` directly instead of ``implicit.als``: the latter picks the GPU
build when one is present, and the model format (numpy float32 factors) assumes CPU arrays.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from .config import ALSConfig
from .interactions import Interactions
from .model import Model, ModelMeta

Progress = Callable[[int, float], None]


def train(
    interactions: Interactions,
    config: ALSConfig | None = None,
    *,
    progress: Progress | None = None,
    trained_at: float | None = None,
) -> Model:
    """Fit ALS and package the result; ``progress(iteration, seconds)`` after each iteration."""
    config = config or ALSConfig()
    started = time.perf_counter()
    matrix = interactions.matrix
    # Imported here so that importing the package for serving never loads implicit, and
    # before the limit: threadpoolctl only limits BLAS libraries already loaded, and importing
    # implicit loads scipy's own OpenBLAS (numpy ships another).
    from implicit.cpu.als import AlternatingLeastSquares  # type: ignore[import-untyped]

    with threadpool_limits(limits=1, user_api="blas"):
        als = AlternatingLeastSquares(
            factors=config.factors,
            regularization=config.regularization,
            alpha=config.alpha,
            iterations=config.iterations,
            dtype=np.float32,
            num_threads=config.num_threads,
            random_state=config.seed,
        )
        callback = None
        if progress is not None:
            report = progress

            def callback(iteration: int, seconds: float, _loss: object) -> None:
                report(iteration, seconds)

        if matrix.nnz:
            als.fit(matrix, show_progress=False, callback=callback)
            user_factors = np.ascontiguousarray(als.user_factors, dtype=np.float32)
            item_factors = np.ascontiguousarray(als.item_factors, dtype=np.float32)
        else:
            # implicit cannot fit an empty matrix; an empty model still serves popularity.
            user_factors = np.zeros((matrix.shape[0], config.factors), dtype=np.float32)
            item_factors = np.zeros((matrix.shape[1], config.factors), dtype=np.float32)
    seconds = time.perf_counter() - started
    meta = ModelMeta(
        trained_at=time.time() if trained_at is None else trained_at,
        reference_time=interactions.reference_time,
        newest_event_at=interactions.newest_event_at,
        als=config,
        interactions=interactions.config,
        n_users=matrix.shape[0],
        n_items=matrix.shape[1],
        n_events=interactions.n_events,
        nnz=matrix.nnz,
        training_seconds=seconds,
    )
    return Model(
        user_factors=user_factors,
        item_factors=item_factors,
        user_ids=interactions.user_ids,
        item_ids=interactions.item_ids,
        user_items=matrix,
        popularity=interactions.popularity(),
        meta=meta,
    )
