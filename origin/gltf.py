"""3D facts from glTF 2.0 blobs: what a client wants to know before it downloads one.

``read_facts`` reads a blob through ranged reads and answers ``None`` (not glTF at all), facts
with ``valid=True``, or facts with ``valid=False`` and the reason (it claims to be glTF but is
malformed). It never raises for bad input: uploads of broken files are stored as bytes and
flagged, never answered with a 500. Errors raised by the ``read`` callback itself (storage I/O)
are not bad input and propagate.

Only the JSON of a glTF is read. A GLB costs three reads: its first 20 bytes (magic, header,
first chunk header), the JSON chunk, and the 8-byte header of the BIN chunk that follows it,
whose length is checked against the buffer's; the binary buffer itself is never read. Any
other blob costs one more read, up to its first 64 KiB, to look for glTF JSON.

What ``valid`` means: the JSON parses, it is glTF 2.x, the GLB container's lengths agree with
the file, every index the facts depend on is in range and of the right type, byte ranges of
buffer views and accessors lie inside their buffers, and the node hierarchy is a forest. It is
not the Khronos validator: the binary data (indices, vertex values, images) is never inspected,
and spec rules that do not affect the facts (alignment, extension semantics, ``extensionsRequired``
being a subset of ``extensionsUsed``) are not checked.

Counting: each mesh counts once, however many nodes instance it: the counts describe the data a
client downloads, not what one frame draws. Vertices are the POSITION accessor counts summed over
primitives. Triangles per primitive follow its mode: TRIANGLES count/3, TRIANGLE_STRIP and
TRIANGLE_FAN count-2, points and lines 0, where count is that of the indices accessor if there
is one, else of POSITION.

The bounding box is in scene space (``bounding_box_space == "scene"``): the POSITION accessors'
min/max boxes, each transformed by its node's world matrix (node ``matrix`` or TRS, composed
down the hierarchy) and united over every mesh instance of the default scene (``scene``, else
the first scene). Transforming a box's corners bounds the geometry; it is exact for translation
and scale and may be loose under rotation. A skinned mesh's node transform is ignored, as the
spec says, and it is taken in its bind pose (the joint matrices live in the binary buffer, which
is not read); morph targets are ignored. A document with no scenes gets the union of its meshes
in their own coordinates (``"mesh"``). The box is ``None`` when there is no geometry, when any
POSITION accessor in the document lacks min/max (the spec requires them; a partial box
would mislead), or when the arithmetic leaves the finite range.
"""

from __future__ import annotations

import asyncio
import math
import re
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, NoReturn

from . import json_body

__all__ = ["SNIFF_BYTES", "GltfFacts", "read_facts", "sniff"]

#: How much of a blob's start ``read_facts`` reads to decide whether it is glTF; callers of
#: ``sniff`` should pass at least this much when the blob is that large.
SNIFF_BYTES: Final = 64 * 1024
#: JSON documents larger than this are parsed in a worker thread: parsing is CPU work that
#: would stall every other request on the event loop.
THREAD_THRESHOLD: Final = 256 * 1024

Reader = Callable[[int, int], Awaitable[bytes]]
Box = tuple[tuple[float, float, float], tuple[float, float, float]]
Matrix = tuple[float, ...]  # 4x4, column-major as glTF writes it

_GLB_MAGIC: Final = b"glTF"
_GLB_HEADER: Final = struct.Struct("<4sII")
_CHUNK_HEADER: Final = struct.Struct("<II")
_GLB_PREFIX: Final = _GLB_HEADER.size + _CHUNK_HEADER.size
_CHUNK_JSON: Final = 0x4E4F534A
_CHUNK_BIN: Final = 0x004E4942
# Counts and byte lengths above 2**53 cannot be real files and would lose precision in the
# JavaScript clients that read the facts.
_MAX_INT: Final = 2**53
_BOM: Final = b"\xef\xbb\xbf"
# Keys that only glTF puts at the top level of a JSON object; "nodes" or "meshes" alone are
# common words in other JSON formats, so they do not count as a claim to be glTF.
_GLTF_KEY: Final = re.compile(
    rb'"(?:asset|accessors|bufferViews|extensionsUsed|extensionsRequired)"\s*:'
)
_VERSION: Final = re.compile(r"(\d+)\.(\d+)")
_COMPONENT_SIZE: Final = {5120: 1, 5121: 1, 5122: 2, 5123: 2, 5125: 4, 5126: 4}
# (columns, rows) of each accessor type.
_TYPE_SHAPE: Final = {
    "SCALAR": (1, 1),
    "VEC2": (1, 2),
    "VEC3": (1, 3),
    "VEC4": (1, 4),
    "MAT2": (2, 2),
    "MAT3": (3, 3),
    "MAT4": (4, 4),
}
_TRIANGLES: Final = 4
_STRIP_OR_FAN: Final = (5, 6)
_IDENTITY: Final[Matrix] = tuple(float(i % 5 == 0) for i in range(16))
_TRANSFORM_KEYS: Final = ("matrix", "translation", "rotation", "scale")
_MATERIAL_TEXTURES: Final = ("normalTexture", "occlusionTexture", "emissiveTexture")
_PBR_TEXTURES: Final = ("baseColorTexture", "metallicRoughnessTexture")


@dataclass(frozen=True, slots=True)
class GltfFacts:
    """Facts about one glTF 2.0 blob. When ``valid`` is False, ``error`` says why; the counts
    are then 0 and the box ``None``, and only what was read before the error (container,
    generator, versions, extensions) is filled in."""

    #: Version of this record's JSON shape, stored with it, so readers can tell old rows apart.
    FORMAT: ClassVar[int] = 1

    container: str  # "glb" or "gltf"
    valid: bool
    error: str | None = None
    generator: str | None = None
    version: str | None = None
    min_version: str | None = None
    scene_count: int = 0
    node_count: int = 0
    mesh_count: int = 0
    primitive_count: int = 0
    material_count: int = 0
    texture_count: int = 0
    image_count: int = 0
    animation_count: int = 0
    skin_count: int = 0
    vertex_count: int = 0
    triangle_count: int = 0
    bounding_box: Box | None = None  # (min xyz, max xyz)
    bounding_box_space: str | None = None  # "scene" or "mesh", see the module docstring
    extensions_used: tuple[str, ...] = ()
    extensions_required: tuple[str, ...] = ()
    # URIs of buffers and images outside the blob (not data: URIs): a .gltf that has any is
    # not self-contained, and a client needs those files too.
    external_uris: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        """Every key, always, so stored facts have one shape; the box as ``{"min", "max"}``."""
        box = self.bounding_box
        return {
            "facts_version": self.FORMAT,
            "container": self.container,
            "valid": self.valid,
            "error": self.error,
            "generator": self.generator,
            "version": self.version,
            "min_version": self.min_version,
            "scene_count": self.scene_count,
            "node_count": self.node_count,
            "mesh_count": self.mesh_count,
            "primitive_count": self.primitive_count,
            "material_count": self.material_count,
            "texture_count": self.texture_count,
            "image_count": self.image_count,
            "animation_count": self.animation_count,
            "skin_count": self.skin_count,
            "vertex_count": self.vertex_count,
            "triangle_count": self.triangle_count,
            "bounding_box": None if box is None else {"min": list(box[0]), "max": list(box[1])},
            "bounding_box_space": self.bounding_box_space,
            "extensions_used": list(self.extensions_used),
            "extensions_required": list(self.extensions_required),
            "external_uris": list(self.external_uris),
        }


def sniff(head: bytes) -> str | None:
    """Which glTF container ``head`` (the start of a blob) looks like, or None.

    ``"glb"`` when it starts with the GLB magic ``glTF`` (whatever the version: ``read_facts``
    flags versions other than 2). ``"gltf"`` when, after an optional UTF-8 BOM and JSON
    whitespace, it opens a JSON object and contains a key only glTF uses at its top level
    (``"asset"``, ``"accessors"``, ``"bufferViews"``, ``"extensionsUsed"``,
    ``"extensionsRequired"``). Exporters write these first, so ``SNIFF_BYTES`` of the head find
    them; a JSON document whose first such key comes later is not recognised (a miss costs only
    the facts). Generic JSON is not taken for glTF, so it is never flagged as broken glTF.
    """
    if head[:4] == _GLB_MAGIC:
        return "glb"
    text = head.removeprefix(_BOM).lstrip(b" \t\r\n")
    if text[:1] == b"{" and _GLTF_KEY.search(text):
        return "gltf"
    return None


async def read_facts(
    read: Reader, size: int, *, max_json: int = 64 * 1024 * 1024
) -> GltfFacts | None:
    """Facts about the blob of ``size`` bytes that ``read(start, end)`` returns bytes
    ``[start, end)`` of; None when it is not glTF (see ``sniff``).

    A GLB's JSON chunk and a .gltf document larger than ``max_json`` are flagged invalid without
    being read. A read that returns fewer bytes than asked is taken as a truncated blob.
    """
    if size <= 0:
        return None
    # The GLB magic and both headers fit in 20 bytes: a GLB's binary buffer is never touched.
    # Anything else needs a longer look to tell glTF JSON from other JSON.
    head = (await read(0, min(size, _GLB_PREFIX)))[:size]
    if head[:4] != _GLB_MAGIC and size > len(head):
        head += (await read(len(head), min(size, SNIFF_BYTES)))[: SNIFF_BYTES - len(head)]
    container = sniff(head)
    if container is None:
        return None
    try:
        if container == "glb":
            raw, bin_length = await _glb_json(read, size, head, max_json)
        else:
            raw, bin_length = await _gltf_json(read, size, head, max_json), None
    except _Malformed as e:
        return GltfFacts(container=container, valid=False, error=str(e))
    if len(raw) > THREAD_THRESHOLD:
        return await asyncio.to_thread(_facts, raw, container, bin_length)
    return _facts(raw, container, bin_length)


class _Malformed(Exception):
    """The blob claims to be glTF but breaks a rule; the message is shown to clients."""


def _fail(message: str) -> NoReturn:
    raise _Malformed(message)


async def _read_exact(read: Reader, start: int, end: int, head: bytes) -> bytes:
    if end <= len(head):
        return head[start:end]
    data = await read(start, end)
    if len(data) != end - start:
        _fail(f"blob is shorter than its size: read {len(data)} of {end - start} bytes at {start}")
    return data


async def _glb_json(
    read: Reader, size: int, head: bytes, max_json: int
) -> tuple[bytes, int | None]:
    """The JSON chunk of a GLB and the BIN chunk's length (None without one)."""
    if size < _GLB_HEADER.size:
        _fail(f"GLB truncated: {size} bytes, shorter than the 12-byte header")
    if len(head) < min(size, _GLB_PREFIX):
        _fail(f"blob is shorter than its size: read {len(head)} bytes at 0")
    _, version, length = _GLB_HEADER.unpack_from(head)
    if version != 2:
        _fail(f"GLB container version {version}; only version 2 (glTF 2.0) is supported")
    if length > size:
        _fail(f"GLB truncated: header says {length} bytes, blob has {size}")
    if length < size:
        _fail(f"GLB header says {length} bytes, blob has {size} (trailing bytes)")
    json_start = _GLB_PREFIX
    if length < json_start:
        _fail("GLB has no JSON chunk: the file ends inside the first chunk header")
    json_length, json_type = _CHUNK_HEADER.unpack(await _read_exact(read, 12, json_start, head))
    if json_type != _CHUNK_JSON:
        _fail(f"GLB first chunk has type 0x{json_type:08x}, not JSON (0x{_CHUNK_JSON:08x})")
    json_end = json_start + json_length
    if json_end > length:
        _fail(
            f"GLB JSON chunk of {json_length} bytes at offset {json_start} runs past the end of"
            f" the file ({length} bytes)"
        )
    if json_length > max_json:
        _fail(f"GLB JSON chunk of {json_length} bytes exceeds the limit of {max_json}")
    bin_length = None
    if json_end < length:
        bin_start = json_end + _CHUNK_HEADER.size
        if bin_start > length:
            _fail(f"GLB truncated: the file ends inside the chunk header at offset {json_end}")
        chunk_length, chunk_type = _CHUNK_HEADER.unpack(
            await _read_exact(read, json_end, bin_start, head)
        )
        # A second chunk of another type is an extension's and is ignored, as the spec says.
        if chunk_type == _CHUNK_BIN:
            if bin_start + chunk_length > length:
                _fail(
                    f"GLB BIN chunk of {chunk_length} bytes at offset {bin_start} runs past the"
                    f" end of the file ({length} bytes)"
                )
            bin_length = chunk_length
    raw = await _read_exact(read, json_start, json_end, head)
    # Chunks are padded to 4 bytes with spaces; some writers pad with NULs, which JSON rejects.
    return raw.rstrip(b"\x00"), bin_length


async def _gltf_json(read: Reader, size: int, head: bytes, max_json: int) -> bytes:
    if size > max_json:
        _fail(f"glTF JSON document of {size} bytes exceeds the limit of {max_json}")
    if size <= len(head):
        return head[:size]
    return head + await _read_exact(read, len(head), size, b"")


def _facts(raw: bytes, container: str, bin_length: int | None) -> GltfFacts:
    try:
        root = json_body.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        return GltfFacts(container, valid=False, error=f"glTF JSON is not UTF-8: {e}")
    except json_body.NotJson as e:
        return GltfFacts(container, valid=False, error=f"glTF JSON does not parse: {e}")
    analysis = _Analysis(container, bin_length)
    try:
        return analysis.run(root)
    except _Malformed as e:
        return analysis.invalid(str(e))


# Typed access to untrusted JSON. ``where`` is a JSON-pointer-like path for error messages.


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(f"{where} must be an object")
    return value


def _objects(value: object, where: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        _fail(f"{where} must be an array")
    return [_object(item, f"{where}[{i}]") for i, item in enumerate(value)]


def _int(value: object, where: str, minimum: int = 0) -> int:
    # bool is an int in Python but not in JSON.
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(f"{where} must be an integer")
    if not minimum <= value <= _MAX_INT:
        _fail(f"{where} is {value}, outside [{minimum}, 2^53]")
    return value


def _opt_int(obj: dict[str, Any], key: str, where: str, default: int, minimum: int = 0) -> int:
    value = obj.get(key)
    return default if value is None else _int(value, f"{where}.{key}", minimum)


def _index(value: object, count: int, where: str, target: str) -> int:
    index = _int(value, where)
    if index >= count:
        _fail(f"{where}: {target} index {index} out of range ({count} {target})")
    return index


def _opt_index(obj: dict[str, Any], key: str, count: int, where: str, target: str) -> int | None:
    value = obj.get(key)
    return None if value is None else _index(value, count, f"{where}.{key}", target)


def _indices(value: object, count: int, where: str, target: str) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list):
        _fail(f"{where} must be an array")
    return [_index(item, count, f"{where}[{i}]", target) for i, item in enumerate(value)]


def _opt_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        _fail(f"{where}.{key} must be a string")
    return None if value is None else _storable(value)


def _strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        _fail(f"{where} must be an array of strings")
    return tuple(dict.fromkeys(map(_storable, value)))  # unique, in the document's order


def _storable(text: str) -> str:
    """A string of the document as the facts keep it: U+0000 (valid JSON, and glTF does not
    forbid it) as U+FFFD, since PostgreSQL's JSONB and text cannot hold it."""
    return text.replace("\x00", "\ufffd")


def _numbers(value: object, length: int, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != length:
        _fail(f"{where} must be an array of {length} numbers")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, int | float) or isinstance(item, bool):
            _fail(f"{where}[{i}] must be a number")
        try:
            number = float(item)
        except OverflowError:
            _fail(f"{where}[{i}] is out of range")
        if not math.isfinite(number):
            _fail(f"{where}[{i}] is not finite")
        out.append(number)
    return tuple(out)


def _version(value: str, where: str) -> int:
    match = _VERSION.fullmatch(value)
    if match is None:
        _fail(f"{where} {value!r} is not <major>.<minor>")
    return int(match.group(1))


class _Analysis:
    """One pass over a parsed glTF document: validates what the facts rest on, then counts."""

    def __init__(self, container: str, bin_length: int | None) -> None:
        self.container = container
        self.bin_length = bin_length
        self.generator: str | None = None
        self.version: str | None = None
        self.min_version: str | None = None
        self.used: tuple[str, ...] = ()
        self.required: tuple[str, ...] = ()

    def invalid(self, error: str) -> GltfFacts:
        return GltfFacts(
            self.container,
            valid=False,
            error=error,
            generator=self.generator,
            version=self.version,
            min_version=self.min_version,
            extensions_used=self.used,
            extensions_required=self.required,
        )

    def run(self, document: object) -> GltfFacts:
        root = _object(document, "the glTF document")
        self._asset(root)
        self.used = _strings(root.get("extensionsUsed"), "extensionsUsed")
        self.required = _strings(root.get("extensionsRequired"), "extensionsRequired")

        def array(key: str) -> list[dict[str, Any]]:
            return _objects(root.get(key), key)

        buffers, views, accessors = array("buffers"), array("bufferViews"), array("accessors")
        images, samplers, textures = array("images"), array("samplers"), array("textures")
        materials, meshes, nodes = array("materials"), array("meshes"), array("nodes")
        skins, animations, scenes = array("skins"), array("animations"), array("scenes")
        cameras = array("cameras")

        external = self._buffers(buffers)
        self._buffer_views(views, buffers)
        boxes = self._accessors(accessors, views)
        external += self._images(images, views)
        for i, texture in enumerate(textures):
            _opt_index(texture, "source", len(images), f"textures[{i}]", "images")
            _opt_index(texture, "sampler", len(samplers), f"textures[{i}]", "samplers")
        self._materials(materials, len(textures))
        vertices, triangles, primitives, mesh_boxes = self._meshes(
            meshes, accessors, boxes, len(materials)
        )
        parents = self._nodes(nodes, len(meshes), len(skins), len(cameras))
        self._skins(skins, len(nodes), len(accessors))
        self._animations(animations, len(nodes), len(accessors))
        roots = [self._scene_roots(i, scene, parents) for i, scene in enumerate(scenes)]
        default_scene = _opt_index(root, "scene", len(scenes), "glTF", "scenes")
        if scenes:
            space = "scene"
            box = _scene_box(roots[default_scene or 0], nodes, mesh_boxes)
        else:
            space = "mesh"
            box = _union(mesh_boxes)
        if box is not None and not all(math.isfinite(v) for corner in box for v in corner):
            box = None
        return GltfFacts(
            self.container,
            valid=True,
            generator=self.generator,
            version=self.version,
            min_version=self.min_version,
            scene_count=len(scenes),
            node_count=len(nodes),
            mesh_count=len(meshes),
            primitive_count=primitives,
            material_count=len(materials),
            texture_count=len(textures),
            image_count=len(images),
            animation_count=len(animations),
            skin_count=len(skins),
            vertex_count=vertices,
            triangle_count=triangles,
            bounding_box=box,
            bounding_box_space=None if box is None else space,
            extensions_used=self.used,
            extensions_required=self.required,
            external_uris=tuple(dict.fromkeys(external)),
        )

    def _asset(self, root: dict[str, Any]) -> None:
        if "asset" not in root:
            _fail("missing asset: a glTF document must have an asset object")
        asset = _object(root["asset"], "asset")
        self.generator = _opt_str(asset, "generator", "asset")
        version = _opt_str(asset, "version", "asset")
        if version is None:
            _fail("missing asset.version")
        self.version = version
        self.min_version = _opt_str(asset, "minVersion", "asset")
        if (major := _version(version, "asset.version")) != 2:
            _fail(f"glTF version {version}; only glTF 2.x is supported (major version {major})")
        if self.min_version is not None:
            _version(self.min_version, "asset.minVersion")

    def _buffers(self, buffers: list[dict[str, Any]]) -> list[str]:
        external = []
        for i, buffer in enumerate(buffers):
            where = f"buffers[{i}]"
            length = _int(buffer.get("byteLength"), f"{where}.byteLength")
            uri = _opt_str(buffer, "uri", where)
            if uri is not None and not uri.startswith("data:"):
                external.append(uri)
            # In a GLB, buffer 0 without a uri is the BIN chunk, which must hold all of it (the
            # chunk may be longer: padding).
            bin_length = self.bin_length
            if i == 0 and uri is None and bin_length is not None and length > bin_length:
                _fail(
                    f"buffers[0].byteLength is {length}, longer than the GLB BIN chunk"
                    f" ({self.bin_length} bytes)"
                )
        return external

    def _buffer_views(self, views: list[dict[str, Any]], buffers: list[dict[str, Any]]) -> None:
        for i, view in enumerate(views):
            where = f"bufferViews[{i}]"
            buffer = _index(view.get("buffer"), len(buffers), f"{where}.buffer", "buffers")
            offset = _opt_int(view, "byteOffset", where, 0)
            length = _int(view.get("byteLength"), f"{where}.byteLength", minimum=1)
            _opt_int(view, "byteStride", where, 0, minimum=4)
            buffer_length: int = buffers[buffer]["byteLength"]
            if offset + length > buffer_length:
                _fail(
                    f"{where}: bytes [{offset}, {offset + length}) lie outside buffers[{buffer}]"
                    f" ({buffer_length} bytes)"
                )

    def _accessors(
        self, accessors: list[dict[str, Any]], views: list[dict[str, Any]]
    ) -> list[Box | None]:
        """Validates accessors; returns each one's min/max box when it is a 3-vector with both."""
        boxes: list[Box | None] = []
        for i, accessor in enumerate(accessors):
            where = f"accessors[{i}]"
            count = _int(accessor.get("count"), f"{where}.count")
            component = accessor.get("componentType")
            if type(component) is not int or component not in _COMPONENT_SIZE:
                _fail(f"{where}.componentType {component!r} is not a glTF component type")
            kind = accessor.get("type")
            if not isinstance(kind, str) or kind not in _TYPE_SHAPE:
                _fail(f"{where}.type {kind!r} is not a glTF accessor type")
            view = _opt_index(accessor, "bufferView", len(views), where, "bufferViews")
            offset = _opt_int(accessor, "byteOffset", where, 0)
            if view is not None and count > 0:
                columns, rows = _TYPE_SHAPE[kind]
                size = _COMPONENT_SIZE[component]
                # Matrix columns start on 4-byte boundaries, so small components are padded.
                column = rows * size if columns == 1 else -(-rows * size // 4) * 4
                element = columns * column
                stride = views[view].get("byteStride") or element
                end = offset + (count - 1) * stride + element
                view_length: int = views[view]["byteLength"]
                if end > view_length:
                    _fail(
                        f"{where}: {count} elements from offset {offset} need {end} bytes,"
                        f" bufferViews[{view}] has {view_length}"
                    )
            box = None
            if kind == "VEC3" and "min" in accessor and "max" in accessor:
                low = _numbers(accessor["min"], 3, f"{where}.min")
                high = _numbers(accessor["max"], 3, f"{where}.max")
                box = ((low[0], low[1], low[2]), (high[0], high[1], high[2]))
            boxes.append(box)
        return boxes

    def _images(self, images: list[dict[str, Any]], views: list[dict[str, Any]]) -> list[str]:
        external = []
        for i, image in enumerate(images):
            uri = _opt_str(image, "uri", f"images[{i}]")
            _opt_index(image, "bufferView", len(views), f"images[{i}]", "bufferViews")
            if uri is not None and not uri.startswith("data:"):
                external.append(uri)
        return external

    def _materials(self, materials: list[dict[str, Any]], textures: int) -> None:
        for i, material in enumerate(materials):
            where = f"materials[{i}]"
            refs = [(key, material.get(key), where) for key in _MATERIAL_TEXTURES]
            if "pbrMetallicRoughness" in material:
                pbr = _object(material["pbrMetallicRoughness"], f"{where}.pbrMetallicRoughness")
                refs += [
                    (key, pbr.get(key), f"{where}.pbrMetallicRoughness") for key in _PBR_TEXTURES
                ]
            for key, ref, parent in refs:
                if ref is not None:
                    info = _object(ref, f"{parent}.{key}")
                    _index(info.get("index"), textures, f"{parent}.{key}.index", "textures")

    def _meshes(
        self,
        meshes: list[dict[str, Any]],
        accessors: list[dict[str, Any]],
        boxes: list[Box | None],
        materials: int,
    ) -> tuple[int, int, int, list[Box | None]]:
        """Vertex, triangle and primitive totals, and each mesh's box in its own space
        (None when it has no positions or a position accessor lacks min/max)."""
        vertices = triangles = primitives = 0
        mesh_boxes: list[Box | None] = []
        unknown = False  # a POSITION without min/max: no mesh box is trustworthy then
        for m, mesh in enumerate(meshes):
            where = f"meshes[{m}]"
            items = _objects(mesh.get("primitives"), f"{where}.primitives")
            if not items:
                _fail(f"{where}.primitives must be a non-empty array")
            mesh_box: list[Box] = []
            for p, primitive in enumerate(items):
                at = f"{where}.primitives[{p}]"
                attributes = _object(primitive.get("attributes"), f"{at}.attributes")
                for name, ref in attributes.items():
                    _index(ref, len(accessors), f"{at}.attributes.{name}", "accessors")
                for t, target in enumerate(_objects(primitive.get("targets"), f"{at}.targets")):
                    for name, ref in target.items():
                        _index(ref, len(accessors), f"{at}.targets[{t}].{name}", "accessors")
                indices = _opt_index(primitive, "indices", len(accessors), at, "accessors")
                _opt_index(primitive, "material", materials, at, "materials")
                mode = _opt_int(primitive, "mode", at, _TRIANGLES)
                if mode > 6:
                    _fail(f"{at}.mode {mode} is not a glTF primitive mode (0-6)")
                position = attributes.get("POSITION")
                count = 0
                if position is not None:
                    count = accessors[position]["count"]
                    vertices += count
                    box = boxes[position]
                    if box is None:
                        unknown = True
                    else:
                        mesh_box.append(box)
                if indices is not None:
                    count = accessors[indices]["count"]
                if mode == _TRIANGLES:
                    triangles += count // 3
                elif mode in _STRIP_OR_FAN:
                    triangles += max(count - 2, 0)
                primitives += 1
            mesh_boxes.append(_union(mesh_box))
        return vertices, triangles, primitives, [None] * len(meshes) if unknown else mesh_boxes

    def _nodes(
        self, nodes: list[dict[str, Any]], meshes: int, skins: int, cameras: int
    ) -> list[int | None]:
        """Validates nodes and their hierarchy; returns each node's parent."""
        parents: list[int | None] = [None] * len(nodes)
        for i, node in enumerate(nodes):
            where = f"nodes[{i}]"
            _opt_index(node, "mesh", meshes, where, "meshes")
            _opt_index(node, "skin", skins, where, "skins")
            _opt_index(node, "camera", cameras, where, "cameras")
            for key, length in (("matrix", 16), ("translation", 3), ("rotation", 4), ("scale", 3)):
                if key in node:
                    _numbers(node[key], length, f"{where}.{key}")
            for child in _indices(node.get("children"), len(nodes), f"{where}.children", "nodes"):
                if child == i or parents[child] is not None:
                    _fail(f"{where}.children: node {child} has more than one parent")
                parents[child] = i
        # With one parent each, every node not on a cycle descends from a root.
        reached = 0
        stack = [i for i, parent in enumerate(parents) if parent is None]
        while stack:
            reached += 1
            stack.extend(nodes[stack.pop()].get("children") or ())
        if reached != len(nodes):
            _fail("the node hierarchy has a cycle")
        return parents

    def _skins(self, skins: list[dict[str, Any]], nodes: int, accessors: int) -> None:
        for i, skin in enumerate(skins):
            where = f"skins[{i}]"
            if not _indices(skin.get("joints"), nodes, f"{where}.joints", "nodes"):
                _fail(f"{where}.joints must be a non-empty array")
            _opt_index(skin, "inverseBindMatrices", accessors, where, "accessors")
            _opt_index(skin, "skeleton", nodes, where, "nodes")

    def _animations(self, animations: list[dict[str, Any]], nodes: int, accessors: int) -> None:
        for a, animation in enumerate(animations):
            where = f"animations[{a}]"
            samplers = _objects(animation.get("samplers"), f"{where}.samplers")
            for s, sampler in enumerate(samplers):
                at = f"{where}.samplers[{s}]"
                _index(sampler.get("input"), accessors, f"{at}.input", "accessors")
                _index(sampler.get("output"), accessors, f"{at}.output", "accessors")
            for c, channel in enumerate(_objects(animation.get("channels"), f"{where}.channels")):
                at = f"{where}.channels[{c}]"
                _index(channel.get("sampler"), len(samplers), f"{at}.sampler", "samplers")
                target = _object(channel.get("target"), f"{at}.target")
                _opt_index(target, "node", nodes, f"{at}.target", "nodes")

    @staticmethod
    def _scene_roots(i: int, scene: dict[str, Any], parents: list[int | None]) -> list[int]:
        where = f"scenes[{i}].nodes"
        roots = _indices(scene.get("nodes"), len(parents), where, "nodes")
        for j, node in enumerate(roots):
            if parents[node] is not None:
                _fail(f"{where}[{j}]: node {node} is not a root (its parent is {parents[node]})")
        return roots


def _union(boxes: Iterable[Box | None]) -> Box | None:
    present = [box for box in boxes if box is not None]
    if not present:
        return None
    low = tuple(min(box[0][k] for box in present) for k in range(3))
    high = tuple(max(box[1][k] for box in present) for k in range(3))
    return (low[0], low[1], low[2]), (high[0], high[1], high[2])


def _local_matrix(node: dict[str, Any]) -> Matrix:
    """The node's transform; ``_Analysis._nodes`` has validated its arrays."""
    if "matrix" in node:
        return tuple(float(v) for v in node["matrix"])
    tx, ty, tz = (float(v) for v in node.get("translation", (0, 0, 0)))
    x, y, z, w = (float(v) for v in node.get("rotation", (0, 0, 0, 1)))
    sx, sy, sz = (float(v) for v in node.get("scale", (1, 1, 1)))
    norm = math.sqrt(x * x + y * y + z * z + w * w)
    if norm > 0:
        x, y, z, w = x / norm, y / norm, z / norm, w / norm
    else:
        x, y, z, w = 0.0, 0.0, 0.0, 1.0
    # Columns of T * R * S.
    return (
        (1 - 2 * (y * y + z * z)) * sx,
        2 * (x * y + z * w) * sx,
        2 * (x * z - y * w) * sx,
        0.0,
        2 * (x * y - z * w) * sy,
        (1 - 2 * (x * x + z * z)) * sy,
        2 * (y * z + x * w) * sy,
        0.0,
        2 * (x * z + y * w) * sz,
        2 * (y * z - x * w) * sz,
        (1 - 2 * (x * x + y * y)) * sz,
        0.0,
        tx,
        ty,
        tz,
        1.0,
    )


def _multiply(a: Matrix, b: Matrix) -> Matrix:
    """a * b for column-major 4x4 matrices."""
    return tuple(
        sum(a[k * 4 + row] * b[col * 4 + k] for k in range(4))
        for col in range(4)
        for row in range(4)
    )


def _transform_box(m: Matrix, box: Box) -> Box:
    """The box around the transformed corners of ``box`` (Arvo's method: per axis, each matrix
    term contributes its smaller or larger product)."""
    low = [m[12], m[13], m[14]]
    high = [m[12], m[13], m[14]]
    for row in range(3):
        for col in range(3):
            a = m[col * 4 + row] * box[0][col]
            b = m[col * 4 + row] * box[1][col]
            low[row] += min(a, b)
            high[row] += max(a, b)
    return (low[0], low[1], low[2]), (high[0], high[1], high[2])


def _scene_box(
    roots: list[int], nodes: list[dict[str, Any]], mesh_boxes: list[Box | None]
) -> Box | None:
    boxes = []
    stack = [(root, _IDENTITY) for root in roots]
    while stack:
        index, parent = stack.pop()
        node = nodes[index]
        has_transform = any(key in node for key in _TRANSFORM_KEYS)
        world = _multiply(parent, _local_matrix(node)) if has_transform else parent
        mesh = node.get("mesh")
        if mesh is not None and (box := mesh_boxes[mesh]) is not None:
            # A skinned mesh is placed by its joints, never by its node (glTF 2.0, "Skins").
            boxes.append(box if "skin" in node else _transform_box(world, box))
        stack.extend((child, world) for child in node.get("children") or ())
    return _union(boxes)
