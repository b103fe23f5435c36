"""Events -> interactions matrix -> ALS model -> rankings; no HTTP and no SQL.

Pipeline (each step a module, numeric code apart from I/O):

* ``events``: ``Event`` (one row) and ``EventColumns`` (column-wise, for vectorised paths).
* ``interactions``: ``build_interactions``/``build_from_columns`` → ``Interactions`` (users x
  assets float32 CSR, id maps both ways, weights per kind, optional half-life decay).
* ``training``: ``train`` → ``Model`` with implicit's CPU ALS, BLAS pinned to one thread.
* ``storage``: one-file model format (``save_model``/``load_model``/``model_to_bytes``/
  ``model_from_bytes``), no pickle, loadable as zero-copy views or an mmap.
* ``precompute``: ``precompute_top`` stores every user's top k with the model (serving is then
  a lookup for users without newer events).
* ``serving``: ``Recommender`` (numpy only): ``recommend``, ``recommend_batch``, ``similar``,
  ``popular``, fold-in of newer events, popularity fallback, kind filter, deleted assets.
* ``evaluation``: random/time splits, precision/recall/nDCG@k and coverage, ALS vs popularity.
* ``synthetic``: seeded generator with planted taste groups, shared by tests and benchmarks.

Importing this package does not import implicit (only ``train`` does, lazily), so a server
worker that only serves never loads it.
"""

from .config import DEFAULT_KIND_WEIGHTS, ALSConfig, InteractionConfig
from .evaluation import (
    Evaluation,
    Metrics,
    Split,
    evaluate_columns,
    evaluate_split,
    split_by_time,
    split_random,
)
from .events import AssetId, ColumnsBuilder, Event, EventColumns, encode_events
from .interactions import Interactions, build_from_columns, build_interactions
from .model import Model, ModelMeta
from .precompute import PrecomputeStats, precompute_top
from .serving import Recommendations, Recommender, pin_blas_threads
from .storage import load_model, model_from_bytes, model_to_bytes, save_model, write_model
from .synthetic import SyntheticConfig, SyntheticData, generate
from .training import train

__all__ = [
    "DEFAULT_KIND_WEIGHTS",
    "ALSConfig",
    "AssetId",
    "ColumnsBuilder",
    "Evaluation",
    "Event",
    "EventColumns",
    "InteractionConfig",
    "Interactions",
    "Metrics",
    "Model",
    "ModelMeta",
    "PrecomputeStats",
    "Recommendations",
    "Recommender",
    "Split",
    "SyntheticConfig",
    "SyntheticData",
    "build_from_columns",
    "build_interactions",
    "encode_events",
    "evaluate_columns",
    "evaluate_split",
    "generate",
    "load_model",
    "model_from_bytes",
    "model_to_bytes",
    "pin_blas_threads",
    "precompute_top",
    "save_model",
    "split_by_time",
    "split_random",
    "train",
    "write_model",
]
