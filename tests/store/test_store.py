"""Version store: ids, atomic creation, the lock, lineage, names that never reach a path unchecked."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time

import pytest

from loraship import paths
from loraship.errors import ConfigError, VersionError
from loraship.store import versions


def _build_ok(tmp, m):
    (tmp / "payload.txt").write_text("x")


def test_versions_are_numbered_timestamped_and_recorded():
    v1 = versions.create("m", None, _build_ok)
    with versions.model_lock("m"):
        v2 = versions.create("m", "v1", _build_ok)
    assert (v1.id, v2.id) == ("v1", "v2")
    assert paths.VERSION_DIR_RE.match(v2.path.name)
    assert v2.manifest["parent"] == "v1"
    assert [v.id for v in versions.lineage(v2)] == ["v1", "v2"]


def test_failed_build_leaves_nothing_and_its_id_is_never_reused():
    versions.create("m", None, _build_ok)

    def boom(tmp, m):
        (tmp / "half.bin").write_bytes(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        versions.create("m", "v1", boom)
    assert [v.id for v in versions.list_versions("m")] == ["v1"]
    assert not [p for p in paths.model_dir("m").iterdir() if p.name.startswith(".tmp-")]
    assert versions.create("m", "v1", _build_ok).id == "v3"


def test_deleted_version_id_is_not_reused():
    import shutil

    versions.create("m", None, _build_ok)
    v2 = versions.create("m", "v1", _build_ok)
    shutil.rmtree(v2.path)
    assert versions.create("m", "v1", _build_ok).id == "v3"


def test_folder_without_manifest_is_not_a_version():
    v1 = versions.create("m", None, _build_ok)
    (v1.path.parent / "v9_20260101_000000").mkdir()
    assert [v.id for v in versions.list_versions("m")] == ["v1"]


def _hold_lock(model, home, ready, release):
    os.environ["LORASHIP_HOME"] = home
    with versions.model_lock(model):
        ready.set()
        release.wait(10)


def test_second_run_on_same_model_is_refused_with_who_holds_it():
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=("m", os.environ["LORASHIP_HOME"], ready, release))
    p.start()
    try:
        assert ready.wait(10)
        with pytest.raises(VersionError, match=r"busy: pid \d+ holds"):
            with versions.model_lock("m"):
                pass
        with versions.model_lock("other"):  # other models are not blocked
            pass
    finally:
        release.set()
        p.join(10)
    with versions.model_lock("m"):  # released when the holder exits
        pass


def test_lock_is_released_when_holder_is_killed():
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=("m", os.environ["LORASHIP_HOME"], ready, release))
    p.start()
    assert ready.wait(10)
    p.kill()
    p.join(10)
    time.sleep(0.1)
    with versions.model_lock("m"):
        pass


@pytest.mark.parametrize("bad", ["../etc", "Mixed", "a/b", "", ".hidden", "x" * 81, "a b", "m:v1"])
def test_bad_model_names_never_reach_a_path(bad):
    with pytest.raises(ConfigError, match="model name"):
        paths.model_dir(bad)


@pytest.mark.parametrize("bad", ["1", "v0", "V1", "v1x", "latest", "v01"])
def test_bad_version_refs(bad):
    versions.create("m", None, _build_ok)
    with pytest.raises(VersionError):
        versions.get("m", bad)


def test_unknown_version_lists_the_known_ones():
    versions.create("m", None, _build_ok)
    with pytest.raises(VersionError, match=r"no version v7 \(known: v1\)"):
        versions.get("m", "v7")


def test_manifest_is_valid_json_after_update():
    from loraship.store import manifest

    v1 = versions.create("m", None, _build_ok)
    manifest.update(v1.path, lambda m: m["stages"].__setitem__("train", {"ok": True}))
    data = json.loads((v1.path / "manifest.json").read_text())
    assert data["stages"]["train"] == {"ok": True}
    assert data["libraries"]["python"]
