"""The dataset side through the job runner: Ray fan-out per shard, partials in the store, merge,
crops; the stored tables must equal a scan and finalize done in this process."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner
from test_data import write_bad_folder

from atlas.cli import main
from atlas.data.open import open_source
from atlas.data.skipped import read_skipped
from atlas.kinds.examples import finalize_layer, scan_shard
from atlas.models import load_model
from atlas.plan.spec import parse_spec
from atlas.run.job import run_job
from atlas.site import build_site
from atlas.store.store import Store

pytestmark = pytest.mark.slow

SPEC = """
[job]
name = "examples-integration"
out = "{out}"
[model]
name = "tiny-cnn"
[[layers]]
name = "conv3"
channels = "0:3"
[render]
enabled = false
[examples]
source = "{source}"
k = 3
shard_size = 8
batch_size = 8
crop_size = 32
thumb_size = 16
bins = 10
[execute]
workers = 2
"""


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    root = tmp_path_factory.mktemp("integration")
    photos = root / "photos"
    photos.mkdir()
    demo = open_source("demo")
    for index, source_id in enumerate(demo.ids()[::17][:26]):
        demo.load(source_id).resize((64, 64)).save(photos / f"p{index:02d}.png")
    (photos / "broken.jpg").write_bytes(b"not a jpeg at all")
    write_bad_folder(photos / "bad")  # one corrupt, truncated, too large and too small image each
    text = SPEC.format(out=root / "out", source=photos)
    (root / "job.toml").write_text(text)
    spec = parse_spec(text, source="<integration spec>")
    return photos, root / "out", run_job(spec, build=False, only=("scan", "examples"))


SKIPPED = {
    "broken.jpg": "corrupt",
    "bad/corrupt.jpg": "corrupt",
    "bad/truncated.png": "truncated",
    "bad/bomb.gif": "too_large",
    "bad/tiny.png": "tiny",
}
SKIPPED_TEXT = "5 inputs skipped (2 corrupt, 1 truncated, 1 too large, 1 too small)"


def test_scan_reports_bad_images(job: tuple) -> None:
    _, out, result = job
    assert result.ok, result.failed
    assert result.skipped_inputs == {"corrupt": 2, "truncated": 1, "too_large": 1, "tiny": 1}
    table = read_skipped(Store(out))
    assert dict(zip(table["source_id"].to_pylist(), table["reason"].to_pylist(), strict=True)) == SKIPPED
    assert all(table["message"].to_pylist())  # the decoder's words, e.g. "cannot identify image file"
    assert {p.name for p in (out / "shards/skipped").iterdir()} == {
        f"{e.key}.parquet" for e in Store(out).entries() if e.kind == "scan"
    }


def test_summary_status_and_site_list_the_skipped_inputs(job: tuple) -> None:
    _, out, _ = job
    spec = str(out.parent / "job.toml")
    again = CliRunner().invoke(main, ["scan", spec])  # every unit done: no Ray, only the summary
    assert again.exit_code == 0 and SKIPPED_TEXT in again.output, again.output
    status = CliRunner().invoke(main, ["status", spec, "-v"])
    assert status.exit_code == 0 and SKIPPED_TEXT in status.output, status.output
    assert "skipped: bad/truncated.png: truncated: " in status.output
    site = build_site(out).parent
    index = (site / "index.html").read_text()
    assert '<a href="skipped.html">5 skipped</a>' in index and "1 too small" in index
    listing = (site / "skipped.html").read_text()
    assert all(f"<code>{source_id}</code>" in listing for source_id in SKIPPED)


def test_stored_examples_equal_a_local_scan(job: tuple) -> None:
    photos, out, _ = job
    stored = Store(out).read("examples", layer="conv3")
    model = load_model("tiny-cnn")
    source = open_source(photos)
    parts = [scan_shard(model, ["conv3"], source, shard, k=3, batch_size=8) for shard in source.shards(8)]
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    local, _ = finalize_layer(
        model,
        "conv3",
        merged,
        source,
        crop_size=32,
        thumb_size=16,
        unit_key="local",
        channels=[0, 1, 2],
        bins=10,
    )

    def rows(table: pa.Table) -> list[tuple]:
        keyed = table.select(["channel", "bucket", "rank", "source_id", "x", "y", "crop", "thumb"])
        return sorted(tuple(row.values()) for row in keyed.to_pylist())

    assert stored is not None and stored.num_rows == local.num_rows > 0
    assert rows(stored) == rows(local)
    for (key, value), (local_key, local_value) in zip(_activations(stored), _activations(local), strict=True):
        assert key == local_key
        assert value == pytest.approx(local_value, rel=1e-4, abs=1e-5)


def _activations(table: pa.Table) -> list[tuple[tuple, float]]:
    """((channel, bucket, rank), activation) rows, sorted; floats compared apart (other threads)."""
    rows = table.select(["channel", "bucket", "rank", "activation"]).to_pylist()
    return sorted(((r["channel"], r["bucket"], r["rank"]), r["activation"]) for r in rows)
