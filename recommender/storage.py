"""The model file: one self-describing binary blob, no pickle.

Layout: 8-byte magic ``ORECMDL1``, a little-endian uint64 header length, a UTF-8 JSON header
(metadata plus, per array, dtype/shape/offset), then the raw arrays, each starting on a 64-byte
boundary. Why not ``np.savez``: a zip member cannot be memory-mapped, and with this layout a
loaded model is a set of zero-copy views on the bytes (or on an mmap of the file), so loading a
500 MB model costs about the time to build the id dicts, and several server workers mapping the
same file share one copy in the page cache. Id lists are stored as NUL-joined UTF-8 because
decoding them is one ``split`` in C instead of a million-step Python loop.

Only numeric dtypes from a fixed list are accepted on load, so a crafted file cannot make us
build object arrays. Integrity is the blob store's job (the file is addressed by its digest).
"""

from __future__ import annotations

import io
import json
import mmap
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from .model import FORMAT_VERSION, Model, ModelMeta

MAGIC = b"ORECMDL1"
ALIGN = 64
_ALLOWED_DTYPES = frozenset({"<f4", "<f8", "<i4", "<i8", "|u1"})
_HEADER = struct.Struct("<Q")


def _pack_ids(ids: Sequence[str]) -> NDArray[np.uint8]:
    return np.frombuffer("\x00".join(ids).encode("utf-8"), dtype=np.uint8)


def _unpack_ids(blob: NDArray[np.uint8], count: int) -> list[str]:
    if count == 0:
        return []
    ids = blob.tobytes().decode("utf-8").split("\x00")
    if len(ids) != count:
        raise ValueError("model file: id list length does not match the header")
    return ids


def _arrays(model: Model) -> dict[str, NDArray[Any]]:
    matrix = model.user_items
    arrays = {
        "user_factors": np.ascontiguousarray(model.user_factors, dtype="<f4"),
        "item_factors": np.ascontiguousarray(model.item_factors, dtype="<f4"),
        "user_items_indptr": np.ascontiguousarray(matrix.indptr, dtype="<i8"),
        "user_items_indices": np.ascontiguousarray(matrix.indices, dtype="<i4"),
        "user_items_data": np.ascontiguousarray(matrix.data, dtype="<f4"),
        "popularity": np.ascontiguousarray(model.popularity, dtype="<f8"),
        "user_ids": _pack_ids(model.user_ids),
        "item_ids": _pack_ids(model.item_ids),
    }
    # Optional arrays: a reader that does not know them ignores them, and a file without
    # them loads with ``top_items=None``; so the format version stays 1 both ways.
    if model.top_items is not None and model.top_scores is not None:
        arrays["top_items"] = np.ascontiguousarray(model.top_items, dtype="<i4")
        arrays["top_scores"] = np.ascontiguousarray(model.top_scores, dtype="<f4")
    return arrays


def _pad(n: int) -> int:
    return -n % ALIGN


def write_model(model: Model, out: BinaryIO) -> int:
    """Write the model to a binary stream; returns the number of bytes written."""
    arrays = _arrays(model)
    # Offsets depend on the header length and the header holds offsets: lay arrays out
    # relative to the data start, then fix the data start once the header size is known.
    layout: list[dict[str, Any]] = []
    relative = 0
    for name, array in arrays.items():
        layout.append(
            {"name": name, "dtype": array.dtype.str, "shape": list(array.shape), "at": relative}
        )
        relative += array.nbytes + _pad(array.nbytes)
    header = json.dumps({"meta": model.meta.to_dict(), "arrays": layout}).encode("utf-8")
    data_start = len(MAGIC) + _HEADER.size + len(header)
    data_start += _pad(data_start)
    written = out.write(MAGIC) + out.write(_HEADER.pack(len(header))) + out.write(header)
    written += out.write(b"\x00" * (data_start - written))
    for array in arrays.values():
        if array.nbytes:  # memoryview cannot cast an empty 2-d view
            written += out.write(array.data.cast("B"))
        written += out.write(b"\x00" * _pad(array.nbytes))
    return written


def save_model(model: Model, path: str | os.PathLike[str]) -> None:
    """Write to ``path`` via a temporary file and rename, so readers never see half a model."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as out:
        write_model(model, out)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(target)


def model_to_bytes(model: Model) -> bytes:
    buffer = io.BytesIO()
    write_model(model, buffer)
    return buffer.getvalue()


def _view(buffer: Any, size: int, data_start: int, entry: dict[str, Any]) -> NDArray[Any]:
    dtype = str(entry["dtype"])
    if dtype not in _ALLOWED_DTYPES:
        raise ValueError(f"model file: dtype {dtype!r} not allowed")
    shape = tuple(int(n) for n in entry["shape"])
    if any(n < 0 for n in shape):
        raise ValueError("model file: negative shape")
    count = int(np.prod(shape, dtype=np.int64))
    offset = data_start + int(entry["at"])
    if offset < data_start or offset + count * np.dtype(dtype).itemsize > size:
        raise ValueError(f"model file: array {entry['name']!r} lies outside the file")
    return np.frombuffer(buffer, dtype=dtype, count=count, offset=offset).reshape(shape)


def model_from_buffer(buffer: Any) -> Model:
    """Build a model of read-only views on ``buffer`` (bytes, mmap, memoryview)."""
    view = memoryview(buffer)
    size = view.nbytes
    prefix = len(MAGIC) + _HEADER.size
    if size < prefix or bytes(view[: len(MAGIC)]) != MAGIC:
        raise ValueError("not a recommender model file")
    (header_len,) = _HEADER.unpack(bytes(view[len(MAGIC) : prefix]))
    if prefix + header_len > size:
        raise ValueError("model file: truncated header")
    header = json.loads(bytes(view[prefix : prefix + header_len]).decode("utf-8"))
    meta = ModelMeta.from_dict(header["meta"])
    if meta.format_version != FORMAT_VERSION:
        raise ValueError(f"model file: unsupported format version {meta.format_version}")
    data_start = prefix + header_len + _pad(prefix + header_len)
    arrays = {e["name"]: _view(buffer, size, data_start, e) for e in header["arrays"]}
    n_users, n_items = meta.n_users, meta.n_items
    indptr = arrays["user_items_indptr"]
    if indptr.shape != (n_users + 1,) or int(indptr[-1]) != arrays["user_items_data"].shape[0]:
        raise ValueError("model file: inconsistent user_items matrix")
    # Passing (data, indices, indptr) with an explicit shape keeps the views, no copy.
    user_items = sp.csr_matrix(
        (arrays["user_items_data"], arrays["user_items_indices"], indptr),
        shape=(n_users, n_items),
        copy=False,
    )
    return Model(
        user_factors=arrays["user_factors"],
        item_factors=arrays["item_factors"],
        user_ids=_unpack_ids(arrays["user_ids"], n_users),
        item_ids=_unpack_ids(arrays["item_ids"], n_items),
        user_items=user_items,
        popularity=arrays["popularity"],
        meta=meta,
        top_items=arrays.get("top_items"),
        top_scores=arrays.get("top_scores"),
    )


def model_from_bytes(data: bytes) -> Model:
    return model_from_buffer(data)


def load_model(path: str | os.PathLike[str], *, use_mmap: bool = False) -> Model:
    """Load a model file. ``use_mmap`` maps it instead of reading it: faster and shared between
    processes, but the file must not be truncated or rewritten in place while in use (deleting
    or replacing it by rename is fine on POSIX)."""
    with open(path, "rb") as f:
        if use_mmap:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            return model_from_buffer(mapped)
        return model_from_buffer(f.read())
