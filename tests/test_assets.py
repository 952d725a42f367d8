"""Assets: the R lazy-load chunk formats, idempotent fetch, and clear errors for missing assets."""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib

import pytest

from trainopt import assets
from trainopt.errors import AssetError


@pytest.mark.parametrize("kind", ["zlib", "Z", "2", "1", "0"])
def test_decompress_chunk_formats(kind):
    payload = b"R serialized object bytes " * 50
    head = struct.pack(">I", len(payload))
    body = {"zlib": zlib.compress(payload),
            "Z": b"Z" + lzma.compress(payload, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}]),
            "2": b"2" + bz2.compress(payload), "1": b"1" + zlib.compress(payload), "0": b"0" + payload}[kind]
    assert assets._decompress_chunk(head + body) == payload
    with pytest.raises(AssetError, match="corrupt"):
        assets._decompress_chunk(struct.pack(">I", len(payload) + 1) + body)


def test_missing_asset_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINOPT_HOME", str(tmp_path))
    with pytest.raises(AssetError, match="trainopt data fetch --only smollm2"):
        assets.asset_path("smollm2")
    with pytest.raises(AssetError, match="unknown asset"):
        assets.fetch(["nope"])


def test_fetch_is_idempotent(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINOPT_HOME", str(tmp_path))
    calls = []
    monkeypatch.setitem(assets.FETCHERS, "fine_foods", lambda root, log: calls.append(1) or root)
    assets.fetch(["fine_foods", "minilm-l6"])
    assert calls == [1]
    done = tmp_path / "data" / "fine_foods"
    done.mkdir(parents=True)
    assets._mark_done(done, {"x": 1})
    assert assets.asset_path("fine_foods") == done
    assert (assets.minilm_path() / "config.json").is_file()
