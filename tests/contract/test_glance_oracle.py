"""Smoke contract tests: openstacksdk against a REAL Glance 33 behind a REAL Keystone 30, with a
REAL Nova 34 booting from Glance's images, all on 127.0.0.1 (one stack for this module).

OBSERVED FACTS (glance 33.0.0 / openstacksdk 4.x; asserted below; the image code of issue 21
must copy them):
  * Upload: ``create_image(name, data=<file object>, disk_format="qcow2", container_format=
    "bare", tags=[...], <key>=<value>...)`` -> status ``active``; extra keywords are image
    properties, read back in ``image.properties``; new images are ``visibility: shared``.
  * ``images(tag=[t])`` filters by tag on the server. Custom properties are filtered on the
    server only by a raw ``GET /v2/images?<key>=<value>`` (``images(<key>=...)`` ignores them).
  * Per-owner storage quota (``user_storage_quota``), checked while the data streams in:
    413, body "Image exceeds the storage quota: ..."; openstacksdk raises ``HttpException``
    (status_code 413) and deletes the image it created: nothing is left behind.
  * Data that is not what ``disk_format`` says (random bytes as qcow2): 415, body "Image
    disk_format qcow2 does not match stream data raw"; the image is deleted as well.
  * Nova boots a server from an uploaded image (ACTIVE, ``server.image.id`` is the image);
    an image without data (``queued``) is refused with 400 "Image <id> is not active.".
  * Delete: 204; ``get_image`` then raises ``NotFoundException``.

Run: bash tests/oracle/setup.sh && .venv/bin/pytest -m contract tests/contract
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.contract.conftest import budget, connect, launch

pytestmark = pytest.mark.contract

QUOTA_MIB = 2  # Glance's user_storage_quota for the stack's project
WAIT_S = 300  # bound for BUILD -> ACTIVE and for a delete (polled every 0.5 s)
CLUSTER = 1 << 16  # qcow2 cluster size used by qcow2_image


def qcow2_image(data_clusters: int, fill: bytes = b"cloudvac") -> bytes:
    """A valid qcow2 v3 image (64 MiB virtual size, 64 KiB clusters) of ``5 + data_clusters``
    clusters: header, L1 table, refcount table and block, one L2 table, then the data clusters
    (each filled with ``fill`` and its number), all allocated with refcount 1."""
    l1_off, rt_off, rb_off, l2_off, data_off = (c * CLUSTER for c in (1, 2, 3, 4, 5))
    total = 5 + data_clusters
    virtual_size = 64 * 1024 * 1024
    # magic, version, backing file (offset, size), cluster_bits, size, crypt, L1 entries, L1
    # offset, refcount table (offset, clusters), snapshots (count, offset), features
    # (incompatible, compatible, autoclear), refcount_order, header length
    header = struct.pack(">IIQIIQIIQQIIQQQQII", 0x514649FB, 3, 0, 0, 16, virtual_size, 0, 1,
                         l1_off, rt_off, 1, 0, 0, 0, 0, 0, 4, 104)
    copied = 1 << 63
    out = bytearray(total * CLUSTER)
    out[: len(header)] = header
    out[l1_off : l1_off + 8] = struct.pack(">Q", l2_off | copied)
    out[rt_off : rt_off + 8] = struct.pack(">Q", rb_off)
    out[rb_off : rb_off + 2 * total] = struct.pack(f">{total}H", *([1] * total))
    for i in range(data_clusters):
        off = data_off + i * CLUSTER
        out[l2_off + 8 * i : l2_off + 8 * i + 8] = struct.pack(">Q", off | copied)
        block = (fill + i.to_bytes(4, "big")) * (CLUSTER // (len(fill) + 4) + 1)
        out[off : off + CLUSTER] = block[:CLUSTER]
    return bytes(out)


@dataclass(frozen=True)
class ImageCloud:
    keystone: Any
    glance: Any
    nova: Any
    conn: Any


@pytest.fixture(scope="module")
def cloud(oracle_ready: None) -> Iterator[ImageCloud]:
    """Keystone, then Glance (storage quota ``QUOTA_MIB``) and Nova booting from it."""
    t0 = time.monotonic()
    options = launch.GlanceOptions(user_storage_quota=f"{QUOTA_MIB}MB")
    with (
        launch.keystone_oracle() as ks,
        launch.glance_oracle(options, keystone=ks) as glance,
        launch.nova_oracle(keystone=ks, glance=glance) as nova,
    ):
        glance.data["stack_start_s"] = round(time.monotonic() - t0, 2)
        print(f"image cloud up in {glance['stack_start_s']} s (keystone {ks['launch_s']} s, "
              f"glance {glance['launch_s']} s, nova {nova['launch_s']} s)")
        conn = connect(nova)
        try:
            yield ImageCloud(ks, glance, nova, conn)
        finally:
            conn.close()


def _upload(conn: Any, name: str, data: bytes, **kwargs: Any) -> Any:
    return conn.image.create_image(
        name, data=io.BytesIO(data), disk_format="qcow2", container_format="bare",
        allow_duplicates=True, validate_checksum=False, **kwargs,
    )


def _names(conn: Any) -> list[str]:
    return [i.name for i in conn.image.images()]


@budget(10)
def test_upload_with_tag_and_properties_then_filter_and_delete(cloud: ImageCloud) -> None:
    from openstack import exceptions

    conn, run = cloud.conn, uuid.uuid4().hex[:8]
    data = qcow2_image(4)
    src = f"https://images.example.org/{run}/alma9.qcow2"
    tag = f"cloudvac-{run}"
    image = _upload(conn, f"cv-{run}-a", data, tags=[tag], cloudvac_source_url=src,
                    cloudvac_etag='"e1"')
    other = conn.image.create_image(f"cv-{run}-b", disk_format="qcow2", container_format="bare",
                                    allow_duplicates=True, cloudvac_source_url=src + ".old")
    try:
        got = conn.image.get_image(image.id)
        assert (got.status, got.size, got.disk_format) == ("active", len(data), "qcow2")
        assert got.hash_value == hashlib.sha512(data).hexdigest()
        assert got.properties["cloudvac_source_url"] == src
        assert got.properties["cloudvac_etag"] == '"e1"'
        assert got.tags == [tag]
        assert got.owner == cloud.keystone["project_id"]
        assert other.status == "queued"
        assert [i.id for i in conn.image.images(tag=[tag])] == [image.id]
        raw = conn.image.get("/images", params={"cloudvac_source_url": src}).json()
        assert [i["id"] for i in raw["images"]] == [image.id]
    finally:
        conn.image.delete_image(image)
        conn.image.delete_image(other)
    with pytest.raises(exceptions.NotFoundException):
        conn.image.get_image(image.id)
    assert list(conn.image.images(tag=[tag])) == []


@budget(30)
def test_nova_boots_from_the_uploaded_image(cloud: ImageCloud) -> None:
    from openstack import exceptions

    conn, run = cloud.conn, uuid.uuid4().hex[:8]
    assert cloud.nova["glance_url"] == cloud.glance.base_url
    image = _upload(conn, f"cv-{run}-boot", qcow2_image(2))
    queued = conn.image.create_image(f"cv-{run}-queued", disk_format="qcow2",
                                     container_format="bare", allow_duplicates=True)
    server = None
    try:
        server = conn.compute.create_server(name=f"cv-{run}", image_id=image.id, flavor_id="1",
                                            networks="none")
        server = conn.compute.wait_for_server(server, status="ACTIVE", failures=["ERROR"],
                                              interval=0.5, wait=WAIT_S)
        assert server.image.id == image.id
        with pytest.raises(exceptions.BadRequestException, match="is not active"):
            conn.compute.create_server(name=f"cv-{run}-q", image_id=queued.id, flavor_id="1",
                                       networks="none")
    finally:
        if server is not None:
            conn.compute.delete_server(server, ignore_missing=True)
            conn.compute.wait_for_delete(server, interval=0.5, wait=WAIT_S)
        conn.image.delete_image(image)
        conn.image.delete_image(queued)


@budget(10)
def test_storage_quota_is_413_and_leaves_no_image(cloud: ImageCloud) -> None:
    from openstack import exceptions

    conn, run = cloud.conn, uuid.uuid4().hex[:8]
    too_big = qcow2_image(QUOTA_MIB * 1024 * 1024 // CLUSTER)  # + 5 metadata clusters
    with pytest.raises(exceptions.HttpException) as refused:
        _upload(conn, f"cv-{run}-big", too_big)
    assert refused.value.status_code == 413
    assert refused.value.response is not None
    assert "Image exceeds the storage quota" in refused.value.response.text
    assert f"cv-{run}-big" not in _names(conn)
    small = _upload(conn, f"cv-{run}-small", qcow2_image(1))  # the refusal used no quota
    try:
        assert conn.image.get_image(small.id).status == "active"
    finally:
        conn.image.delete_image(small)


@budget(10)
def test_wrong_format_is_415_and_leaves_no_image(cloud: ImageCloud) -> None:
    from openstack import exceptions

    conn, run = cloud.conn, uuid.uuid4().hex[:8]
    with pytest.raises(exceptions.HttpException) as refused:
        _upload(conn, f"cv-{run}-raw", os.urandom(4 * CLUSTER))
    assert refused.value.status_code == 415
    assert refused.value.response is not None
    assert "does not match stream data" in refused.value.response.text
    assert f"cv-{run}-raw" not in _names(conn)
