"""`atlas site OUT --publish DIR`: versioned prefixes, the entry page written last, old versions pruned."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner
from synthetic import SyntheticLayer, SyntheticOptions, write_synthetic_store

from atlas.cli import main
from atlas.publish import content_type

SMALL = SyntheticOptions(image_size=16, crop_size=12, examples_k=2, diversity=2, bins=8, channels_per_unit=4)


def test_publish_to_a_folder_keeps_the_newest_versions(tmp_path):
    store = write_synthetic_store(tmp_path / "out", [SyntheticLayer("l", 4)], SMALL)
    www = tmp_path / "www"
    published = []
    for night in range(3):
        store.write_job({**store.job(), "name": f"night {night}"})  # each build differs
        result = CliRunner().invoke(
            main, ["site", str(tmp_path / "out"), "--publish", str(www), "--keep", "2"]
        )
        assert result.exit_code == 0, result.output
        published.append(json.loads((www / "current.json").read_text())["version"])
    versions = sorted(p.name for p in (www / "versions").iterdir())
    assert len(set(published)) == 3 and versions == sorted(published[1:])
    href = re.search(r'url=([^"]+)"', (www / "index.html").read_text()).group(1)
    assert href == f"versions/{published[-1]}/index.html" and (www / href).is_file()
    assert "night 2" in (www / href).read_text()


def test_content_types_of_site_files():
    assert content_type("index.html") == "text/html; charset=utf-8"
    assert content_type("atlas.css").startswith("text/css")
    assert content_type("l.data.js").startswith("text/javascript")
    assert content_type("sprites/l/3.jpg") == "image/jpeg"
    assert content_type("build.json") == "application/json"
