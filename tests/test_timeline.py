"""A timeline over checkpoints of a tiny CNN trained in the test: build, then add one checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from raytools import local_ray
from training import train_checkpoints, write_photos

from atlas.cli import main
from atlas.kinds.timeline.match import STATUSES
from atlas.models import load_model
from atlas.plan.spec import SpecError, load_spec, parse_spec
from atlas.run.timeline import gather_series, run_timeline, timeline_store
from atlas.site.series import TimelineError, describe_order, stored_series


def spec_for(root: Path, checkpoints: str = '["ckpt/epoch-*.pt"]'):
    photos = write_photos(root / "photos")
    text = f"""
[job]
name = "timeline"
out = "{root / "out"}"
[model]
name = "tiny-cnn"
checkpoints = {checkpoints}
[[layers]]
name = "conv2"
channels = "0:4"
[render]
steps = 2
size = 32
batch = 1
objectives = ["channel"]
channels_per_unit = 4
[examples]
source = "{photos}"
k = 4
shard_size = 4
batch_size = 4
crop_size = 16
thumb_size = 16
bins = 8
[execute]
workers = 1
[timeline]
probes = 6
positions = 4
render_every = 3
"""
    (root / "job.toml").write_text(text)
    return load_spec(root / "job.toml")


def shard_times(out: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "timeline" / "shards").rglob("*.parquet")}


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The checkpoint file names the timeline driver loads, in order."""
    seen: list[str] = []

    def counted(name, checkpoint=None, *args, **kwargs):
        seen.append(Path(checkpoint).name if checkpoint else "")
        return load_model(name, checkpoint, *args, **kwargs)

    monkeypatch.setattr("atlas.models.load_model", counted)  # ModelSpec.load looks it up there
    return seen


@pytest.mark.slow
def test_timeline_builds_and_adding_a_checkpoint_computes_only_its_units(
    tmp_path: Path, loads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    train_checkpoints(tmp_path / "ckpt", 3)
    spec = spec_for(tmp_path)
    order = describe_order(spec.model.checkpoints)
    assert [line.split()[-1].rsplit("/", 1)[-1] for line in order[1:]] == [
        "epoch-1.pt",
        "epoch-2.pt",
        "epoch-3.pt",
    ]
    with local_ray(num_cpus=2):
        first = run_timeline(spec)
        assert first.failed == []
        assert first.checkpoints == first.added == 3
        assert loads == ["epoch-1.pt", "epoch-2.pt", "epoch-3.pt"]  # the newest is not loaded twice
        # every checkpoint probed; positions 0 (every 3rd) and 2 (the latest) rendered and scanned
        # (two shards of four photos each, one examples unit of four channels); two matches
        assert first.computed == {"probe": 3, "render": 2, "scan": 4, "examples": 2, "match": 2}
        store = timeline_store(spec.out)
        series = stored_series(store)
        assert [c.step for c in series] == [1, 2, 3]
        assert [bool(c.render_keys) for c in series] == [True, False, True]
        assert [(len(c.scan_keys), len(c.examples_keys)) for c in series] == [(2, 1), (0, 0), (2, 1)]
        match = store.read_unit(series[1].match_key, "match")
        assert match.num_rows == 32 and set(match.column("status").to_pylist()) <= set(STATUSES)
        cka = store.read_unit(series[2].match_key, "cka").column("cka").to_pylist()
        assert 0.0 < cka[0] <= 1.0 + 1e-6
        probe = store.read_unit(series[0].probe_key, "probe").to_pylist()
        assert {r["layer"] for r in probe} == {"conv2"}
        assert all(0.0 <= r["active"] <= 1.0 and r["max"] >= r["mean"] for r in probe)
        assert all(len(r["signature"]) == 6 * 4 for r in probe)
        # each scanned checkpoint's own top examples: the same photos seen by different weights
        tops = []
        for checkpoint in (series[0], series[2]):
            examples = store.read_unit(checkpoint.examples_keys[0], "examples").to_pylist()
            top = {(r["channel"], r["rank"]): r["activation"] for r in examples if r["bucket"] == "max"}
            assert {channel for channel, _ in top} == {0, 1, 2, 3} and len(top) == 16
            tops.append(top)
        assert tops[0] != tops[1]
        before = shard_times(spec.out)

        train_checkpoints(tmp_path / "more", 4)[-1].rename(tmp_path / "ckpt" / "epoch-4.pt")
        loads.clear()
        second = run_timeline(spec_for(tmp_path))
        assert loads == ["epoch-4.pt"]  # the three earlier files: digests kept by path, size, mtime
        after = shard_times(spec.out)
        series = stored_series(timeline_store(spec.out))
        rows = pq.read_table(spec.out / "timeline" / "shards" / "render").num_rows
        # a nightly job appends its checkpoint (a file name without a step: kept in the order added)
        nightly = tmp_path / "latest.pt"
        weights = torch.load(tmp_path / "ckpt" / "epoch-4.pt")
        torch.save({name: w + 0.01 * torch.randn_like(w) for name, w in weights.items()}, nightly)
        loads.clear()
        third = run_timeline(spec_for(tmp_path), add=[nightly])
        assert loads == ["latest.pt"]
    assert second.failed == []
    assert second.checkpoints == 4 and second.added == 1
    # only the new checkpoint: its probe, its render and scans (the new latest; position 3 is also
    # every 3rd) and its match with epoch 3
    assert second.computed == {"probe": 1, "render": 1, "scan": 2, "examples": 1, "match": 1}
    unchanged = {name: t for name, t in before.items() if not name.startswith("series-")}
    assert all(after[name] == t for name, t in unchanged.items())  # history kept, not rewritten
    assert [c.step for c in series] == [1, 2, 3, 4]
    assert bool(series[2].render_keys) and bool(series[2].examples_keys)  # no longer the latest: kept
    assert rows == 3 * 4  # three rendered checkpoints x four channels
    assert third.computed == {"probe": 1, "render": 1, "scan": 2, "examples": 1, "match": 1}
    series = stored_series(timeline_store(spec.out))
    assert [Path(c.path).name for c in series] == [
        "epoch-1.pt",
        "epoch-2.pt",
        "epoch-3.pt",
        "epoch-4.pt",
        "latest.pt",
    ]
    # the command: nothing left to compute (no Ray needed), the site gets the timeline pages
    loads.clear()
    shown = CliRunner().invoke(main, ["timeline", str(tmp_path / "job.toml")])
    assert shown.exit_code == 0, shown.output
    assert loads == ["latest.pt"]  # once, to check the spec's layers against the newest weights
    # 5 probes, 3 renders (positions 0, 3 and 4), 6 scans and 3 examples units of those
    assert "5 checkpoints (0 new), computed nothing, 17 units already done" in shown.output
    channel_page = (spec.out / "site" / "conv2.timeline.3.html").read_text()
    assert channel_page.count('class="tl-example"') == 4 * 4  # positions 0, 2, 3, 4: four each
    # a file rewritten in place (new mtime) is read again; the same weights stay the same checkpoint
    epoch2 = tmp_path / "ckpt" / "epoch-2.pt"
    os.utime(epoch2, ns=(epoch2.stat().st_atime_ns, epoch2.stat().st_mtime_ns + 10**9))
    loads.clear()
    assert len(gather_series(spec_for(tmp_path), timeline_store(spec.out))[0]) == 5
    assert loads == ["epoch-2.pt"]
    plan = CliRunner().invoke(main, ["plan", str(tmp_path / "job.toml")])
    assert "timeline: 4 checkpoints, in series order" in plan.output and "step 4" in plan.output


def test_a_series_without_checkpoints_or_with_a_missing_one_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(TimelineError, match="no checkpoints.*--add"):
        run_timeline(spec_for(tmp_path, checkpoints="[]"))
    with pytest.raises(TimelineError, match="epoch-9.pt does not exist"):
        run_timeline(spec_for(tmp_path, checkpoints='["ckpt/epoch-9.pt"]'))
    with pytest.raises(TimelineError, match="matches no file"):
        run_timeline(spec_for(tmp_path, checkpoints='["ckpt/step-*.pt"]'))


def test_a_glob_is_ordered_by_the_step_number_and_plan_shows_it(tmp_path: Path) -> None:
    for step in (100, 2, 10):
        (tmp_path / f"ckpt-step{step}.pt").write_bytes(b"")
    lines = describe_order([str(tmp_path / "ckpt-step*.pt")])
    assert "3 checkpoints" in lines[0]
    assert [line.split()[-1].rsplit("-", 1)[-1] for line in lines[1:]] == [
        "step2.pt",
        "step10.pt",
        "step100.pt",
    ]
    assert [line.split()[2] for line in lines[1:]] == ["2", "10", "100"]


def test_timeline_settings_are_checked_with_the_key_and_the_fix(tmp_path: Path) -> None:
    bad = f"""
[job]
name = "x"
out = "{tmp_path / "out"}"
[model]
name = "tiny-cnn"
[[layers]]
name = "conv2"
[timeline]
probes = 1
"""
    with pytest.raises(SpecError, match=r"timeline.*probes"):
        parse_spec(bad, source=str(tmp_path / "job.toml"))
    with pytest.raises(SpecError, match="render_every"):
        parse_spec(bad.replace("probes = 1", "render_evry = 2"), source=str(tmp_path / "job.toml"))
