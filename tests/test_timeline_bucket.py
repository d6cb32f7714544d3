"""A timeline kept in a bucket (moto's S3 server): `--add` computes only the new checkpoint's units,
and neither the timeline's own pruning nor a job run's retention deletes a checkpoint's units."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from raytools import local_ray
from s3server import s3_server
from training import train_checkpoints, write_photos

from atlas.cli import main
from atlas.run.timeline import timeline_store
from atlas.site.series import stored_series
from atlas.store.retention import apply_retention
from atlas.store.store import open_store

JOB = """
[job]
name = "bucket-timeline"
out = "s3://atlas/tl"
[model]
name = "tiny-cnn"
checkpoints = ["{ckpt}/epoch-1.pt", "{ckpt}/epoch-2.pt"]
[[layers]]
name = "conv2"
channels = "0:2"
[render]
steps = 2
size = 32
batch = 1
objectives = ["channel"]
channels_per_unit = 2
[examples]
source = "{photos}"
k = 2
shard_size = 4
batch_size = 4
crop_size = 16
thumb_size = 16
bins = 8
[execute]
workers = 1
[timeline]
probes = 4
positions = 2
"""


@pytest.fixture(scope="module")
def s3():
    with s3_server() as server:
        yield server


def unit_objects(objects: dict[str, bytes]) -> dict[str, bytes]:
    """The timeline's unit shards (not its series, which is rewritten as the series grows)."""
    return {
        key: data
        for key, data in objects.items()
        if key.startswith("tl/timeline/shards/") and "/series/" not in key
    }


@pytest.mark.slow
def test_a_bucket_timeline_adds_one_checkpoint_and_keeps_every_checkpoints_units(
    s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    paths = train_checkpoints(tmp_path / "ckpt", 3)
    job = tmp_path / "job.toml"
    job.write_text(JOB.format(ckpt=tmp_path / "ckpt", photos=write_photos(tmp_path / "photos")))
    with local_ray(num_cpus=2):
        first = CliRunner().invoke(main, ["timeline", str(job)])
        assert first.exit_code == 0, first.output
        # two probes, the latest's render, two scans and one examples unit, one match
        assert (
            "2 checkpoints (2 new), computed 1 examples, 1 match, 2 probe, 1 render, 2 scan" in first.output
        )
        assert "site: s3://atlas/tl/site/index.html" in first.output
        before = unit_objects(s3.objects())
        added = CliRunner().invoke(main, ["timeline", str(job), "--add", str(paths[2]), "--no-site"])
        assert added.exit_code == 0, added.output
    assert "3 checkpoints (1 new), computed 1 examples, 1 match, 1 probe, 1 render, 2 scan" in added.output
    after = unit_objects(s3.objects())
    assert all(after.get(key) == data for key, data in before.items())  # nothing rewritten or pruned
    assert len(after) > len(before)

    store = timeline_store("s3://atlas/tl")
    series = stored_series(store)
    assert [Path(c.path).name for c in series] == ["epoch-1.pt", "epoch-2.pt", "epoch-3.pt"]
    # epoch 2 is no longer the latest, yet its renders, scans and examples stay in the series
    kept = [
        k for c in series for k in (c.probe_key, c.match_key, *c.render_keys, *c.scan_keys, *c.examples_keys)
    ]
    assert len(series[1].render_keys) == len(series[1].examples_keys) == 1 and len(series[1].scan_keys) == 2
    assert store.pending([k for k in kept if k]) == []
    # a job run's retention on the same prefix prunes the job's units only, never the timeline's
    apply_retention(open_store("s3://atlas/tl"), [], keep_runs=1)
    assert unit_objects(s3.objects()) == after
    assert timeline_store("s3://atlas/tl").pending([k for k in kept if k]) == []
