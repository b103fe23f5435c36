"""glTF 2.0 facts, on real files that pygltflib writes (and a few broken ones built from them)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import struct
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pygltflib as gl  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from origin import gltf
from origin.gltf import GltfFacts, read_facts, sniff

GENERATOR = "asset-origin tests"
FLOAT, USHORT = 5126, 5123
# A real 1x1 PNG: images are counted, never decoded, but a test file should hold a real one.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8ffff3f0005fe02fe0def46b8"
    "0000000049454e44ae426082"
)


@dataclass
class FileReader:
    """``read(start, end)`` over a file, as the blob store will offer it; records every range."""

    path: Path
    ranges: list[tuple[int, int]] = field(default_factory=list)

    @property
    def bytes_read(self) -> int:
        return sum(end - start for start, end in self.ranges)

    def _read(self, start: int, end: int) -> bytes:
        with self.path.open("rb") as f:
            f.seek(start)
            return f.read(end - start)

    async def __call__(self, start: int, end: int) -> bytes:
        self.ranges.append((start, end))
        return await asyncio.to_thread(self._read, start, end)


async def facts_of(data: bytes, *, max_json: int = 64 * 1024 * 1024) -> GltfFacts | None:
    async def read(start: int, end: int) -> bytes:
        assert 0 <= start <= end <= len(data), (start, end, len(data))
        return data[start:end]

    return await read_facts(read, len(data), max_json=max_json)


async def invalid(data: bytes, **kwargs: Any) -> str:
    facts = await facts_of(data, **kwargs)
    assert facts is not None
    assert not facts.valid
    assert facts.error
    json.dumps(facts.to_json(), allow_nan=False)
    return facts.error


# Building real files with pygltflib.


class Model:
    """A glTF document under construction: typed arrays packed into one binary buffer."""

    def __init__(self) -> None:
        self.blob = bytearray()
        self.doc = gl.GLTF2(asset=gl.Asset(generator=GENERATOR, version="2.0"))

    def view(self, data: bytes) -> int:
        self.blob.extend(b"\0" * (-len(self.blob) % 4))
        self.doc.bufferViews.append(
            gl.BufferView(buffer=0, byteOffset=len(self.blob), byteLength=len(data))
        )
        self.blob.extend(data)
        return len(self.doc.bufferViews) - 1

    def accessor(self, data: bytes, component: int, count: int, kind: str, **extra: Any) -> int:
        view = self.view(data)
        self.doc.accessors.append(
            gl.Accessor(bufferView=view, componentType=component, count=count, type=kind, **extra)
        )
        return len(self.doc.accessors) - 1

    def positions(self, points: Sequence[tuple[float, float, float]]) -> int:
        data = b"".join(struct.pack("<3f", *p) for p in points)
        low = [min(p[k] for p in points) for k in range(3)]
        high = [max(p[k] for p in points) for k in range(3)]
        return self.accessor(data, FLOAT, len(points), "VEC3", min=low, max=high)

    def indices(self, values: Sequence[int]) -> int:
        return self.accessor(
            struct.pack(f"<{len(values)}H", *values), USHORT, len(values), "SCALAR"
        )

    def mesh(self, *primitives: gl.Primitive) -> int:
        self.doc.meshes.append(gl.Mesh(primitives=list(primitives)))
        return len(self.doc.meshes) - 1

    def node(self, **kwargs: Any) -> int:
        self.doc.nodes.append(gl.Node(**kwargs))
        return len(self.doc.nodes) - 1

    def finish(self) -> Any:
        self.doc.buffers = [gl.Buffer(byteLength=len(self.blob))]
        self.doc.set_binary_blob(bytes(self.blob))
        return self.doc

    def glb(self) -> bytes:
        return b"".join(self.finish().save_to_bytes())

    def save_glb(self, path: Path) -> Path:
        self.finish().save_binary(str(path))
        return path

    def save_gltf(self, path: Path) -> Path:
        doc = self.finish()
        doc.convert_buffers(gl.BufferFormat.DATAURI)
        doc.save_json(str(path))
        return path


def triangle() -> Model:
    scene = Model()
    position = scene.positions([(0, 0, 0), (1, 0, 0), (0, 1, 0)])
    scene.mesh(gl.Primitive(attributes=gl.Attributes(POSITION=position)))
    scene.doc.scenes = [gl.Scene(nodes=[scene.node(mesh=0)])]
    scene.doc.scene = 0
    return scene


# An asymmetric box, so rotations show in the bounding box.
BOX = [(x, y, z) for x in (0, 1) for y in (0, 2) for z in (0, 3)]
BOX_FACES = [0, 1, 3, 0, 3, 2] * 6  # 36 indices: 12 triangles (geometry is not inspected)
STRIP = [(-5, -5, 0), (-4, -5, 0), (-5, -4, 0), (-4, -4, 0)]
POINTS = [(0, 0, -7), (1, 0, -7), (0, 1, -7), (1, 1, -6), (0.5, 0.5, -6.5)]
SIN45 = math.sqrt(0.5)


def rich_scene() -> Model:
    """Two meshes (one instanced twice, one skinned), materials, textures, an embedded image,
    an animation, a skin, node transforms, and extensions."""
    s = Model()
    box = s.mesh(
        gl.Primitive(
            attributes=gl.Attributes(POSITION=s.positions(BOX)),
            indices=s.indices(BOX_FACES),
            material=0,
        )
    )
    skinned = s.mesh(
        gl.Primitive(attributes=gl.Attributes(POSITION=s.positions(STRIP)), mode=5, material=1),
        gl.Primitive(attributes=gl.Attributes(POSITION=s.positions(POINTS)), mode=0),
    )
    s.doc.images = [gl.Image(bufferView=s.view(PNG), mimeType="image/png")]
    s.doc.samplers = [gl.Sampler()]
    s.doc.textures = [gl.Texture(source=0, sampler=0), gl.Texture(source=0)]
    s.doc.materials = [
        gl.Material(
            pbrMetallicRoughness=gl.PbrMetallicRoughness(baseColorTexture=gl.TextureInfo(index=0))
        ),
        gl.Material(
            emissiveTexture=gl.TextureInfo(index=1), extensions={"KHR_materials_unlit": {}}
        ),
    ]
    scaled = s.node(mesh=box, scale=[2, 2, 2])
    rotated = s.node(mesh=box, rotation=[0, 0, SIN45, SIN45], translation=[0, 5, 0])
    s.node(children=[scaled, rotated], translation=[10, 0, 0])  # node 2
    joint = s.node(name="joint")
    # The spec has a skinned mesh's own node transform ignored: this translation must not move it.
    s.node(mesh=skinned, skin=0, translation=[100, 100, 100])  # node 4
    identity = struct.pack("<16f", *(1.0 if i % 5 == 0 else 0.0 for i in range(16)))
    s.doc.skins = [
        gl.Skin(joints=[joint], inverseBindMatrices=s.accessor(identity, FLOAT, 1, "MAT4"))
    ]
    times = s.accessor(struct.pack("<2f", 0, 1), FLOAT, 2, "SCALAR", min=[0], max=[1])
    moves = s.accessor(struct.pack("<6f", 0, 0, 0, 0, 1, 0), FLOAT, 2, "VEC3")
    s.doc.animations = [
        gl.Animation(
            samplers=[gl.AnimationSampler(input=times, output=moves)],
            channels=[
                gl.AnimationChannel(
                    sampler=0, target=gl.AnimationChannelTarget(node=scaled, path="translation")
                )
            ],
        )
    ]
    s.doc.scenes = [gl.Scene(nodes=[2, 4, joint])]
    s.doc.scene = 0
    s.doc.extensionsUsed = ["KHR_materials_unlit", "KHR_texture_transform"]
    s.doc.extensionsRequired = ["KHR_texture_transform"]
    return s


def approx_box(low: Sequence[float], high: Sequence[float]) -> Any:
    """Compares with ``flat(facts.bounding_box)``: pytest.approx does not nest."""
    return pytest.approx([*low, *high], abs=1e-6)


def flat(box: tuple[Sequence[float], Sequence[float]] | None) -> list[float] | None:
    return None if box is None else [*box[0], *box[1]]


# Valid files.


async def test_triangle_gltf(tmp_path: Path) -> None:
    path = triangle().save_gltf(tmp_path / "triangle.gltf")
    facts = await read_facts(FileReader(path), path.stat().st_size)

    assert facts == GltfFacts(
        container="gltf",
        valid=True,
        generator=GENERATOR,
        version="2.0",
        scene_count=1,
        node_count=1,
        mesh_count=1,
        primitive_count=1,
        vertex_count=3,
        triangle_count=1,
        bounding_box=((0.0, 0.0, 0.0), (1.0, 1.0, 0.0)),
        bounding_box_space="scene",
    )


async def test_rich_glb(tmp_path: Path) -> None:
    path = rich_scene().save_glb(tmp_path / "rich.glb")
    assert gl.GLTF2().load_binary(str(path)).meshes  # pygltflib reads back what it wrote
    reader = FileReader(path)
    facts = await read_facts(reader, path.stat().st_size)

    assert facts is not None
    assert facts.error is None
    assert facts.valid
    assert facts.container == "glb"
    assert (facts.generator, facts.version, facts.min_version) == (GENERATOR, "2.0", None)
    counts = (
        facts.scene_count,
        facts.node_count,
        facts.mesh_count,
        facts.primitive_count,
        facts.material_count,
        facts.texture_count,
        facts.image_count,
        facts.animation_count,
        facts.skin_count,
    )
    assert counts == (1, 5, 2, 3, 2, 2, 1, 1, 1)
    # Each mesh once, though the box is instanced twice.
    assert facts.vertex_count == len(BOX) + len(STRIP) + len(POINTS)
    assert facts.triangle_count == 12 + (len(STRIP) - 2) + 0
    # Scaled box: x 10..12, y 0..4, z 0..6. Rotated box (90 degrees about z): x 8..10, y 5..6,
    # z 0..3. Skinned mesh in place: x -5..1, y -5..1, z -7..0.
    assert facts.bounding_box_space == "scene"
    assert flat(facts.bounding_box) == approx_box((-5, -5, -7), (12, 6, 6))
    assert facts.extensions_used == ("KHR_materials_unlit", "KHR_texture_transform")
    assert facts.extensions_required == ("KHR_texture_transform",)
    assert facts.external_uris == ()
    # Header + first chunk header, the BIN chunk's header, the JSON chunk: never the buffer.
    json_length = struct.unpack_from("<I", path.read_bytes(), 12)[0]
    assert sorted(reader.ranges) == [
        (0, 20),
        (20, 20 + json_length),
        (20 + json_length, 28 + json_length),
    ]


async def test_to_json_has_stable_keys_and_serialises() -> None:
    facts = await facts_of(rich_scene().glb())
    assert facts is not None
    document = facts.to_json()
    assert list(document) == [
        "facts_version",
        "container",
        "valid",
        "error",
        "generator",
        "version",
        "min_version",
        "scene_count",
        "node_count",
        "mesh_count",
        "primitive_count",
        "material_count",
        "texture_count",
        "image_count",
        "animation_count",
        "skin_count",
        "vertex_count",
        "triangle_count",
        "bounding_box",
        "bounding_box_space",
        "extensions_used",
        "extensions_required",
        "external_uris",
    ]
    assert json.loads(json.dumps(document, allow_nan=False)) == document
    assert document["bounding_box"] == {
        "min": pytest.approx([-5, -5, -7]),
        "max": pytest.approx([12, 6, 6]),
    }
    broken = GltfFacts(container="glb", valid=False, error="x").to_json()
    assert list(broken) == list(document)


async def test_node_matrix_and_hierarchy() -> None:
    s = triangle()
    # Column-major: scale x by 3, then translate by (1, 2, 3); the child adds (0, 0, 10).
    s.doc.nodes[0] = gl.Node(mesh=0, translation=[0, 0, 10])
    s.node(children=[0], matrix=[3, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 1, 2, 3, 1])
    s.doc.scenes = [gl.Scene(nodes=[1])]
    facts = await facts_of(s.glb())
    assert facts is not None
    assert facts.valid, facts.error
    assert flat(facts.bounding_box) == approx_box((1, 2, 13), (4, 3, 13))


async def test_without_scenes_the_box_is_in_mesh_space() -> None:
    s = rich_scene()
    s.doc.scenes, s.doc.scene = [], None
    facts = await facts_of(s.glb())
    assert facts is not None
    assert facts.valid, facts.error
    assert facts.bounding_box_space == "mesh"
    assert flat(facts.bounding_box) == approx_box((-5, -5, -7), (1, 2, 3))


async def test_the_default_scene_is_the_one_measured() -> None:
    s = rich_scene()
    s.doc.scenes.append(gl.Scene(nodes=[3]))  # only the joint: no geometry
    s.doc.scene = 1
    facts = await facts_of(s.glb())
    assert facts is not None
    assert facts.valid, facts.error
    assert (facts.scene_count, facts.bounding_box, facts.bounding_box_space) == (2, None, None)


async def test_position_without_min_max_leaves_the_box_unknown() -> None:
    s = triangle()
    s.doc.accessors[0].min = s.doc.accessors[0].max = None
    facts = await facts_of(s.glb())
    assert facts is not None
    assert facts.valid, facts.error
    assert facts.vertex_count == 3
    assert facts.bounding_box is None


@pytest.mark.parametrize(
    ("mode", "vertices", "indices", "triangles"),
    [
        (4, 6, None, 2),
        (4, 4, 9, 3),  # the indices count, not the vertex count
        (4, 4, 7, 2),
        (5, 5, None, 3),
        (6, 6, None, 4),
        (5, 4, 2, 0),
        (0, 7, None, 0),
        (1, 8, None, 0),
        (2, 8, None, 0),
        (3, 8, 8, 0),
    ],
)
async def test_triangles_by_mode(
    mode: int, vertices: int, indices: int | None, triangles: int
) -> None:
    s = Model()
    primitive = gl.Primitive(
        attributes=gl.Attributes(POSITION=s.positions([(i, 0, 0) for i in range(vertices)])),
        mode=mode,
    )
    if indices is not None:
        primitive.indices = s.indices([0] * indices)
    s.mesh(primitive)
    facts = await facts_of(s.glb())
    assert facts is not None
    assert facts.valid, facts.error
    assert (facts.vertex_count, facts.triangle_count) == (vertices, triangles)


async def test_external_resources_are_listed() -> None:
    document = {
        "asset": {"version": "2.0", "minVersion": "2.0"},
        "buffers": [{"uri": "model.bin", "byteLength": 12}, {"uri": "data:,", "byteLength": 1}],
        "images": [{"uri": "textures/albedo.png"}, {"uri": "model.bin"}],
    }
    facts = await facts_of(json.dumps(document).encode())
    assert facts is not None
    assert facts.valid, facts.error
    assert facts.min_version == "2.0"
    assert facts.external_uris == ("model.bin", "textures/albedo.png")


async def test_large_json_is_parsed_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    s = triangle()
    for _ in range(20_000):
        s.node(mesh=0, translation=[1, 2, 3])
    s.doc.scenes[0].nodes = list(range(len(s.doc.nodes)))
    data = s.glb()
    assert struct.unpack_from("<I", data, 12)[0] > gltf.THREAD_THRESHOLD
    offloaded: list[object] = []
    to_thread = asyncio.to_thread

    async def spy(func: Callable[..., object], /, *args: object) -> object:
        offloaded.append(func)
        return await to_thread(func, *args)

    monkeypatch.setattr(asyncio, "to_thread", spy)
    facts = await facts_of(data)
    assert facts is not None
    assert facts.valid, facts.error
    assert facts.node_count == 20_001
    assert flat(facts.bounding_box) == approx_box((0, 0, 0), (2, 3, 3))
    assert offloaded


# A GLB with a 200 MiB binary buffer: only its JSON is read, memory stays flat.

BIG = 200 * 1024 * 1024


@pytest.fixture(scope="module")
def big_glb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A triangle and a 200 MiB embedded image. pygltflib writes the JSON; the container is
    written here so that the 200 MiB never sits in memory (pygltflib's writer would hold it
    whole, several times over). ``test_container_writer_matches_pygltflib`` checks the writer."""
    s = triangle()
    s.doc.images = [gl.Image(bufferView=s.view(b""), mimeType="image/png")]
    s.doc.textures = [gl.Texture(source=0)]
    image = s.doc.bufferViews[-1]
    image.byteLength = BIG
    total = image.byteOffset + BIG
    s.doc.buffers = [gl.Buffer(byteLength=total)]
    path = tmp_path_factory.mktemp("big") / "big.glb"
    with path.open("wb") as f:
        write_glb(f, s.doc.gltf_to_json().encode(), bytes(s.blob), total)
    yield path
    path.unlink()


def write_glb(f: Any, json_chunk: bytes, head: bytes, bin_length: int) -> None:
    """A GLB whose BIN chunk is ``head`` followed by filler, written a block at a time."""
    json_chunk += b" " * (-len(json_chunk) % 4)
    padded = bin_length + (-bin_length % 4)
    f.write(struct.pack("<4sII", b"glTF", 2, 12 + 8 + len(json_chunk) + 8 + padded))
    f.write(struct.pack("<II", len(json_chunk), 0x4E4F534A) + json_chunk)
    f.write(struct.pack("<II", padded, 0x004E4942) + head)
    block = bytes(range(256)) * 16384  # 4 MiB of bytes that are not all zeros
    left = padded - len(head)
    while left > 0:
        f.write(block[: min(left, len(block))])
        left -= len(block)


def test_container_writer_matches_pygltflib(tmp_path: Path) -> None:
    s = rich_scene()
    doc = s.finish()
    path = tmp_path / "written.glb"
    with path.open("wb") as f:
        write_glb(f, doc.gltf_to_json().encode(), bytes(s.blob), len(s.blob))
    loaded = gl.GLTF2().load_binary(str(path))
    assert loaded.binary_blob()[: len(s.blob)] == bytes(s.blob)
    expected = gl.GLTF2.load_from_bytes(s.glb())
    assert json.loads(loaded.gltf_to_json()) == json.loads(expected.gltf_to_json())


async def test_big_glb_reads_only_the_json(big_glb: Path) -> None:
    size = await asyncio.to_thread(lambda: big_glb.stat().st_size)
    assert size > BIG
    reader = FileReader(big_glb)
    process = psutil.Process()
    rss_before = process.memory_info().rss
    tracemalloc.start()
    try:
        facts = await read_facts(reader, size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert facts is not None
    assert facts.valid, facts.error
    assert (facts.image_count, facts.texture_count, facts.triangle_count) == (1, 1, 1)
    json_length = struct.unpack_from("<I", reader._read(12, 16))[0]
    assert reader.bytes_read == 20 + json_length + 8
    assert reader.bytes_read < 64 * 1024
    assert peak < 2 * 1024 * 1024, f"peak traced memory {peak} bytes"
    assert process.memory_info().rss - rss_before < 32 * 1024 * 1024


async def test_big_gltf_json_over_the_limit_is_not_read(tmp_path: Path) -> None:
    path = triangle().save_gltf(tmp_path / "t.gltf")
    reader = FileReader(path)
    facts = await read_facts(reader, path.stat().st_size, max_json=100)
    assert facts is not None
    assert not facts.valid
    assert facts.error is not None
    assert "exceeds the limit of 100" in facts.error
    assert reader.bytes_read == path.stat().st_size  # the sniff, no more


async def test_big_glb_json_chunk_over_the_limit() -> None:
    error = await invalid(rich_scene().glb(), max_json=64)
    assert "JSON chunk" in error
    assert "exceeds the limit of 64" in error


# Broken files.


def with_json(document: object, *, raw: bytes | None = None) -> bytes:
    """A GLB around ``document`` (or raw JSON bytes), with the triangle's BIN chunk."""
    s = triangle()
    s.finish()
    chunk = raw if raw is not None else json.dumps(document).encode()
    chunk += b" " * (-len(chunk) % 4)
    blob = bytes(s.blob) + b"\0" * (-len(s.blob) % 4)
    return b"".join(
        [
            struct.pack("<4sII", b"glTF", 2, 28 + len(chunk) + len(blob)),
            struct.pack("<II", len(chunk), 0x4E4F534A),
            chunk,
            struct.pack("<II", len(blob), 0x004E4942),
            blob,
        ]
    )


def triangle_json() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(triangle().finish().gltf_to_json())
    return document


async def test_truncated_glb() -> None:
    data = rich_scene().glb()
    assert "truncated" in await invalid(data[: len(data) // 2])
    assert "truncated" in await invalid(data[:10])
    assert "truncated" in await invalid(data[:4])


async def test_glb_with_trailing_bytes() -> None:
    assert "trailing" in await invalid(rich_scene().glb() + b"\0" * 4)


async def test_wrong_magic_is_not_gltf() -> None:
    data = rich_scene().glb()
    assert await facts_of(b"glTX" + data[4:]) is None


async def test_wrong_glb_version() -> None:
    data = bytearray(rich_scene().glb())
    struct.pack_into("<I", data, 4, 1)
    assert "version 1" in await invalid(bytes(data))


async def test_json_chunk_past_the_end() -> None:
    data = bytearray(rich_scene().glb())
    struct.pack_into("<I", data, 12, len(data))
    assert "runs past the end" in await invalid(bytes(data))


async def test_bin_chunk_past_the_end() -> None:
    data = bytearray(rich_scene().glb())
    json_length = struct.unpack_from("<I", data, 12)[0]
    struct.pack_into("<I", data, 20 + json_length, len(data))
    assert "BIN chunk" in await invalid(bytes(data))


async def test_buffer_longer_than_the_bin_chunk() -> None:
    document = triangle_json()
    document["buffers"][0]["byteLength"] = 1000
    assert "longer than the GLB BIN chunk" in await invalid(with_json(document))


async def test_first_chunk_not_json() -> None:
    data = bytearray(rich_scene().glb())
    struct.pack_into("<I", data, 16, 0x004E4942)
    assert "not JSON" in await invalid(bytes(data))


async def test_short_reads_are_truncation(tmp_path: Path) -> None:
    path = rich_scene().save_glb(tmp_path / "r.glb")
    data = path.read_bytes()

    async def lying(start: int, end: int) -> bytes:
        return data[start : min(end, 100)]

    facts = await read_facts(lying, len(data))
    assert facts is not None
    assert not facts.valid
    assert facts.error is not None
    assert "shorter" in facts.error


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"asset": {"version": "2.0"}, "nodes": [', "does not parse"),
        (b'{"asset": {"version": "2.0"}, "x": NaN}', "NaN is not valid JSON"),
        (b'{"asset": {"version": "2.0"}, "x": Infinity}', "Infinity is not valid JSON"),
        (b'{"asset": {"version": "2.0", "generator": "\xff"}}', "not UTF-8"),
        (b'{"asset": {"version": "2.0", "generator": "\\udc00"}}', "surrogate"),
        (
            b'{"asset": {"version": "2.0"}, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "nested too deeply",
        ),
        (b'{"asset": {"version": "2.0"}, "x": 1' + b"0" * 5000 + b"}", "does not parse"),
        (b"", "does not parse"),
    ],
)
async def test_glb_with_bad_json(raw: bytes, message: str) -> None:
    assert message in await invalid(with_json(None, raw=raw))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("asset"), "missing asset"),
        (lambda d: d.update(asset=5), "asset must be an object"),
        (lambda d: d["asset"].pop("version"), "missing asset.version"),
        (lambda d: d["asset"].update(version="1.0"), "only glTF 2.x"),
        (lambda d: d["asset"].update(version="2"), "not <major>.<minor>"),
        (lambda d: d["asset"].update(minVersion=2.0), "asset.minVersion must be a string"),
        (lambda d: d.update(extensionsUsed="KHR_x"), "extensionsUsed must be an array of strings"),
        (
            lambda d: d["meshes"][0]["primitives"][0]["attributes"].update(POSITION=5),
            "meshes[0].primitives[0].attributes.POSITION: accessors index 5 out of range",
        ),
        (
            lambda d: d["meshes"][0]["primitives"][0]["attributes"].update(POSITION=True),
            "must be an integer",
        ),
        (lambda d: d["meshes"][0]["primitives"][0].update(indices=-1), "outside [0, 2^53]"),
        (lambda d: d["meshes"][0]["primitives"][0].update(material=0), "materials index 0"),
        (lambda d: d["meshes"][0]["primitives"][0].update(mode=7), "not a glTF primitive mode"),
        (lambda d: d["meshes"][0].update(primitives=[]), "non-empty"),
        (lambda d: d["meshes"].append([]), "meshes[1] must be an object"),
        (lambda d: d.update(nodes={}), "nodes must be an array"),
        (lambda d: d["nodes"][0].update(mesh=1), "nodes[0].mesh: meshes index 1 out of range"),
        (lambda d: d["nodes"][0].update(children=[0]), "more than one parent"),
        (lambda d: d["nodes"].append({"children": [0]}), "not a root"),
        (
            lambda d: d["nodes"].extend([{"children": [2]}, {"children": [1]}]),
            "node hierarchy has a cycle",
        ),
        (lambda d: d["nodes"][0].update(translation=[1, 2]), "array of 3 numbers"),
        (lambda d: d["nodes"][0].update(rotation=[0, 0, 0, "1"]), "must be a number"),
        (lambda d: d["nodes"][0].update(scale=[1, 1, 1e400]), "not valid JSON"),
        (lambda d: d["nodes"][0].update(matrix=[1] * 15 + [10**400]), "out of range"),
        (lambda d: d.update(scene=1), "scenes index 1 out of range"),
        (lambda d: d["scenes"][0].update(nodes=[3]), "scenes[0].nodes[0]: nodes index 3"),
        (lambda d: d["accessors"][0].update(count=4), "need 48 bytes, bufferViews[0] has 36"),
        (lambda d: d["accessors"][0].update(componentType=[5126]), "not a glTF component type"),
        (lambda d: d["accessors"][0].update(type="VEC5"), "not a glTF accessor type"),
        (lambda d: d["accessors"][0].update(max=[1, 1]), "accessors[0].max must be an array of 3"),
        (lambda d: d["accessors"][0].update(bufferView=9), "bufferViews index 9"),
        (lambda d: d["bufferViews"][0].update(byteOffset=4), "outside buffers[0]"),
        (lambda d: d["bufferViews"][0].update(buffer=1), "buffers index 1"),
        (lambda d: d["buffers"][0].pop("byteLength"), "buffers[0].byteLength must be an integer"),
        (lambda d: d.update(textures=[{"source": 0}]), "textures[0].source: images index 0"),
        (
            lambda d: d.update(materials=[{"pbrMetallicRoughness": {"baseColorTexture": {}}}]),
            "baseColorTexture.index must be an integer",
        ),
        (lambda d: d.update(skins=[{"joints": []}]), "skins[0].joints must be a non-empty array"),
        (
            lambda d: d.update(animations=[{"samplers": [{"input": 0, "output": 3}]}]),
            "animations[0].samplers[0].output: accessors index 3",
        ),
        (
            lambda d: d.update(animations=[{"channels": [{"sampler": 0, "target": {}}]}]),
            "samplers index 0 out of range (0 samplers)",
        ),
        (lambda d: d.update(cameras=[1]), "cameras[0] must be an object"),
    ],
)
async def test_malformed_gltf_json(
    change: Callable[[dict[str, Any]], object], message: str
) -> None:
    document = triangle_json()
    change(document)
    gltf_error = await invalid(json.dumps(document).encode())
    glb_error = await invalid(with_json(document))
    assert message in gltf_error
    assert glb_error == gltf_error


async def test_invalid_facts_keep_what_was_read() -> None:
    document = triangle_json()
    document["asset"]["generator"] = "Blender I/O"
    document["extensionsUsed"] = ["KHR_draco_mesh_compression"]
    document["nodes"][0]["mesh"] = 7
    facts = await facts_of(json.dumps(document).encode())
    assert facts is not None
    assert not facts.valid
    assert facts.generator == "Blender I/O"
    assert facts.version == "2.0"
    assert facts.extensions_used == ("KHR_draco_mesh_compression",)
    assert (facts.mesh_count, facts.bounding_box) == (0, None)


async def test_gltf_with_bom_and_truncated_text(tmp_path: Path) -> None:
    path = triangle().save_gltf(tmp_path / "t.gltf")
    text = path.read_bytes()
    facts = await facts_of(b"\xef\xbb\xbf\n  " + text)
    assert facts is not None
    assert facts.valid, facts.error
    assert "does not parse" in await invalid(text[: len(text) // 2])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello",
        PNG,
        b"\x00" * 100,
        b'{"name": "not a model", "nodes": [], "meshes": []}',
        b'["asset", "accessors"]',
        b'{"text": "\\"asset\\": no"}',
        b"glT",
    ],
)
async def test_not_gltf(data: bytes) -> None:
    assert await facts_of(data) is None


def test_sniff() -> None:
    assert sniff(b"glTF\x02\x00\x00\x00") == "glb"
    assert sniff(b"glTF\x01\x00\x00\x00") == "glb"  # read_facts flags the version
    assert sniff(b'\xef\xbb\xbf \r\n\t{"asset" : {}}') == "gltf"
    assert sniff(b'{"accessors": []}') == "gltf"
    assert sniff(b'{"extensionsRequired":[]}') == "gltf"
    assert sniff(b'x{"asset": {}}') is None
    assert sniff(b'{"nodes": [], "asset"') is None  # a key needs its colon
    assert sniff(b"") is None


async def test_a_non_gltf_blob_costs_two_small_reads(tmp_path: Path) -> None:
    path = tmp_path / "texture.png"
    path.write_bytes(PNG + os.urandom(1024 * 1024))
    reader = FileReader(path)
    assert await read_facts(reader, path.stat().st_size) is None
    assert reader.ranges == [(0, 20), (20, gltf.SNIFF_BYTES)]


# Properties: no input makes read_facts raise.


def check(facts: GltfFacts | None) -> None:
    if facts is not None:
        assert facts.valid == (facts.error is None)
        json.dumps(facts.to_json(), allow_nan=False)


@given(st.binary(max_size=2048))
async def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    check(await facts_of(data))


@given(st.binary(max_size=64), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
async def test_arbitrary_glb_headers_never_raise(tail: bytes, version: int, length: int) -> None:
    check(await facts_of(struct.pack("<4sII", b"glTF", version, length) + tail))


RICH = rich_scene().glb()


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(RICH) - 1), st.integers(0, 255)), max_size=8))
async def test_corrupted_glb_never_raises(edits: list[tuple[int, int]]) -> None:
    data = bytearray(RICH)
    for position, value in edits:
        data[position] = value
    check(await facts_of(bytes(data)))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
small_ints = st.integers(-1, 4)
gltf_values = json_values | small_ints | st.lists(small_ints | json_values, max_size=4)
KEYS = [
    "scene",
    "scenes",
    "nodes",
    "meshes",
    "accessors",
    "bufferViews",
    "buffers",
    "materials",
    "textures",
    "images",
    "skins",
    "animations",
    "extensionsUsed",
]
PROPERTY_KEYS = [
    "nodes",
    "mesh",
    "children",
    "matrix",
    "translation",
    "rotation",
    "scale",
    "skin",
    "primitives",
    "attributes",
    "POSITION",
    "indices",
    "mode",
    "count",
    "bufferView",
    "buffer",
    "byteLength",
    "byteOffset",
    "componentType",
    "type",
    "min",
    "max",
    "version",
]
objects = st.dictionaries(st.sampled_from(PROPERTY_KEYS), gltf_values, max_size=6)
documents = st.fixed_dictionaries(
    {"asset": st.just({"version": "2.0"}) | objects | gltf_values},
    optional={key: st.lists(objects, max_size=3) | gltf_values for key in KEYS},
)


@given(documents)
async def test_arbitrary_gltf_documents_never_raise(document: dict[str, Any]) -> None:
    facts = await facts_of(json.dumps(document).encode())
    assert facts is not None
    check(facts)
