"""A timeline over checkpoints of a tiny CNN trained in the test: build, then add one checkpoint."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from raytools import local_ray

from atlas.cli import main
from atlas.models.registry import build
from atlas.spec import SpecError, load_spec, parse_spec
from atlas.timeline.match import STATUSES
from atlas.timeline.run import run_timeline, timeline_store
from atlas.timeline.series import TimelineError, describe_order, stored_series


def train_checkpoints(folder: Path, epochs: int) -> list[Path]:
    """tiny-cnn trained a few steps per epoch on synthetic images (class = the brightest colour)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    module, _ = build("tiny-cnn", "none")
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    paths = []
    for epoch in range(1, epochs + 1):
        for _ in range(2):
            images = torch.rand(8, 3, 64, 64)
            labels = images.mean(dim=(2, 3)).argmax(dim=1)
            loss = torch.nn.functional.cross_entropy(module(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        path = folder / f"epoch-{epoch}.pt"
        torch.save(module.state_dict(), path)
        paths.append(path)
    return paths


def spec_for(root: Path, checkpoints: str = '["ckpt/epoch-*.pt"]'):
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
source = "demo"
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


@pytest.mark.slow
def test_timeline_builds_and_adding_a_checkpoint_computes_only_its_units(tmp_path: Path) -> None:
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
        # every checkpoint probed; renders of position 0 (every 3rd) and 2 (the latest); two matches
        assert first.computed == {"probe": 3, "render": 2, "match": 2}
        store = timeline_store(spec.out)
        series = stored_series(store)
        assert [c.step for c in series] == [1, 2, 3]
        assert [bool(c.render_keys) for c in series] == [True, False, True]
        match = store.read_unit(series[1].match_key, "match")
        assert match.num_rows == 32 and set(match.column("status").to_pylist()) <= set(STATUSES)
        cka = store.read_unit(series[2].match_key, "cka").column("cka").to_pylist()
        assert 0.0 < cka[0] <= 1.0 + 1e-6
        probe = store.read_unit(series[0].probe_key, "probe").to_pylist()
        assert {r["layer"] for r in probe} == {"conv2"}
        assert all(0.0 <= r["active"] <= 1.0 and r["max"] >= r["mean"] for r in probe)
        assert all(len(r["signature"]) == 6 * 4 for r in probe)
        before = shard_times(spec.out)

        train_checkpoints(tmp_path / "more", 4)[-1].rename(tmp_path / "ckpt" / "epoch-4.pt")
        second = run_timeline(spec_for(tmp_path))
        after = shard_times(spec.out)
        series = stored_series(timeline_store(spec.out))
        rows = pq.read_table(spec.out / "timeline" / "shards" / "render").num_rows
        # a nightly job appends its checkpoint (a file name without a step: kept in the order added)
        nightly = tmp_path / "latest.pt"
        weights = torch.load(tmp_path / "ckpt" / "epoch-4.pt")
        torch.save({name: w + 0.01 * torch.randn_like(w) for name, w in weights.items()}, nightly)
        third = run_timeline(spec_for(tmp_path), add=[nightly])
    assert second.failed == []
    assert second.checkpoints == 4 and second.added == 1
    # only the new checkpoint: its probe, its render (the new latest; position 3 is also every 3rd)
    # and its match with epoch 3
    assert second.computed == {"probe": 1, "render": 1, "match": 1}
    unchanged = {name: t for name, t in before.items() if not name.startswith("series-")}
    assert all(after[name] == t for name, t in unchanged.items())  # history kept, not rewritten
    assert [c.step for c in series] == [1, 2, 3, 4]
    assert bool(series[2].render_keys)  # no longer the latest, yet its finished renders stay
    assert rows == 3 * 4  # three rendered checkpoints x four channels
    assert third.computed == {"probe": 1, "render": 1, "match": 1}
    series = stored_series(timeline_store(spec.out))
    assert [Path(c.path).name for c in series] == [
        "epoch-1.pt",
        "epoch-2.pt",
        "epoch-3.pt",
        "epoch-4.pt",
        "latest.pt",
    ]
    # the command: nothing left to compute (no Ray needed), the site gets the timeline pages
    shown = CliRunner().invoke(main, ["timeline", str(tmp_path / "job.toml")])
    assert shown.exit_code == 0, shown.output
    assert "5 checkpoints (0 new), computed nothing, 8 units already done" in shown.output
    assert (spec.out / "site" / "conv2.timeline.3.html").is_file()
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
