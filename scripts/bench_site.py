"""Scale benchmark for the site builder: an InceptionV1-sized atlas from synthetic shards.

Makes a synthetic store with the nine mixed layers of torchvision's GoogLeNet (their real
channel counts), small images, ten examples per bucket and four diversity images per channel,
then builds the site in a child process and reports wall time, peak RSS and the largest layer
page. A second child builds a store holding only the largest layer: if the full build's peak
RSS is close to that one, memory is bounded by a layer, not by the atlas.

With `--sae FEATURES` it builds one SAE layer of that many features instead (ViT-B-like, 14 x 14
tokens): quantile groups, decoder neighbours, logit effects and densities for every feature, and
reports build time, peak RSS, the largest page and sprite, the channel view's details and the
feature index, and what a reader's browser loads for one feature on its own page.

With `--before REV` it writes only the largest layer's store and builds its site twice, with the
builder of git revision REV (its `atlas/` exported to a temporary folder) and with this tree, so
two versions' peak RSS compare in one run.

    python scripts/bench_site.py [--out bench-out/site] [--image-size 32] [--crop-size 24]
    python scripts/bench_site.py --sae 49152 --image-size 64 --crop-size 32 --examples-k 5
    python scripts/bench_site.py --layers inception5b --image-size 128 --crop-size 96 --noise 8 --before main
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from atlas.models import load_model
from atlas.site.workers import auto_workers
from atlas.store.outdir import claim_output
from atlas.store.safefs import remove

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the synthetic-store fixture
from synthetic import SyntheticLayer, SyntheticOptions, write_synthetic_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ISSUE_CHANNEL_COUNT = 5484  # the figure the issue quotes for InceptionV1

# VmHWM is the peak RSS of this process image only (ru_maxrss would inherit the parent's peak).
CHILD = """
import json, re, sys, time
from pathlib import Path
from atlas.site import build_site
imported_kib = int(re.search(r"VmRSS:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
start, cpu = time.perf_counter(), time.process_time()
site, workers = (sys.argv[2:] + ["", ""])[:2]
index = build_site(Path(sys.argv[1]), Path(site) if site else None, int(workers) if workers else None)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
status = Path("/proc/self/status").read_text()
peak_kib = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_mib": peak_kib / 1024, "imported_mib": imported_kib / 1024,
                  "index": str(index)}))
"""


def googlenet_mixed_layers() -> list[SyntheticLayer]:
    """The inception (mixed) layers of GoogLeNet with their channel counts and spatial sizes."""
    model = load_model("torchvision:googlenet", weights="none")
    return [
        SyntheticLayer(info.name, info.channels, info.height, info.width)
        for info in model.layers()
        if info.name.startswith("inception") and "." not in info.name
    ]


def build_in_child(
    out: Path, code: Path = ROOT, site: Path | None = None, workers: int | None = None
) -> dict:
    """Build the site in a fresh interpreter, importing `atlas` from `code`, so its peak RSS is
    the builder's alone; `site` (a fresh folder) keeps it from reusing an earlier build's sprites."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    command = [sys.executable, "-c", CHILD, str(out), str(site or ""), str(workers or "")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=code, env=env)
    if result.returncode != 0:
        sys.exit(f"building the site of {out} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def load_average() -> str:
    """The machine is shared: the load says how much of the wall time was waiting for a core."""
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def fresh_store(store: Path, layers: list[SyntheticLayer], options: SyntheticOptions) -> None:
    """A new synthetic store at `store`, deleting only what an earlier run of this script wrote."""
    if store.exists():
        claim_output(store, "bench-site")  # refuses a folder the atlas did not write
        remove(store, within=store.parent)
    claim_output(store, "bench-site")
    write_synthetic_store(store, layers, options, model="torchvision:googlenet")


def compare(
    store: Path, layer: SyntheticLayer, options: SyntheticOptions, before: str, workers: int | None
) -> None:
    """Peak RSS of building one layer's site with git revision `before` and with this tree."""
    start = time.perf_counter()
    fresh_store(store, [layer], options)
    shards, size = folder_size(store / "shards")
    print(
        f"store of {layer.name} written in {time.perf_counter() - start:.1f} s: {shards} shards, {size / 1e6:.0f} MB"
    )
    with tempfile.TemporaryDirectory() as code:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", before, "atlas"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", code], input=archive.stdout, check=True)
        old = build_in_child(store, Path(code), store / "site-before", workers)
    new = build_in_child(store, ROOT, store / "site-after", workers)
    print(
        f"peak RSS building {layer.name} ({layer.channels} channels, images {options.image_size} px, crops "
        f"{options.crop_size} px, k={options.examples_k}, noise {options.noise:g}, workers {workers or 'auto'}) into a fresh folder: {old['peak_mib']:.0f} MiB with "
        f"{before} ({old['seconds']:.1f} s), {new['peak_mib']:.0f} MiB with this tree ({new['seconds']:.1f} s); "
        f"load average {load_average()}"
    )
    print(
        f"  of which importing the builder (before reading anything): {old['imported_mib']:.0f} MiB with {before}, "
        f"{new['imported_mib']:.0f} MiB with this tree"
    )


def folder_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def sae_layer(out: Path, features: int, options: SyntheticOptions) -> None:
    """Build the site of one SAE layer of `features` features and report its costs."""
    layer = SyntheticLayer("blocks.6@sae:bench", features, 14, 14, "tokens")
    start = time.perf_counter()
    fresh_store(out, [layer], replace(options, sae=True))
    shards, size = folder_size(out / "shards")
    print(
        f"store of {features} SAE features written in {time.perf_counter() - start:.1f} s: {shards} shards, {size / 1e6:.0f} MB"
    )
    built = build_in_child(out, site=out / "site-sae")
    site = Path(built["index"]).parent
    pages = [
        p
        for p in site.glob("*.html")
        if re.fullmatch(r"[^.]+(\.p\d+)?\.html", p.name) and p.name != "index.html"
    ]
    sprites = [p.stat().st_size for p in site.glob("img/*/*.jpg")]
    details = max(p.stat().st_size for p in site.glob("img/*/details*.js"))
    index = max(p.stat().st_size for p in site.glob("*.features.js"))
    own = [p.stat().st_size for p in site.glob("img/*/f/*.js")]  # each feature's file on its own page
    shared = max(p.stat().st_size for p in site.glob("*.feature.html"))
    files, total = folder_size(site)
    print(
        f"SAE build: {built['seconds']:.1f} s wall, {built['cpu']:.1f} s CPU in the main process for {features} "
        f"features ({1000 * built['seconds'] / features:.1f} ms per feature); peak RSS {built['peak_mib']:.0f} MiB; "
        f"load average {load_average()}"
    )
    print(
        f"  per feature: a layer page of 256 features ({len(pages)} pages, largest {max(p.stat().st_size for p in pages) / 1e3:.0f} kB), "
        f"its sprite (largest {max(sprites) / 1e3:.0f} kB, mean {sum(sprites) / len(sprites) / 1e3:.0f} kB), "
        f"the channel view's details of its page (largest {details / 1e3:.0f} kB); feature index {index / 1e6:.2f} MB"
    )
    print(
        f"  a feature on its own page: its file (largest {max(own) / 1e3:.1f} kB, mean {sum(own) / len(own) / 1e3:.1f} kB, "
        f"{len(own)} files) and its sprite: 2 requests, at most {(max(own) + max(sprites)) / 1e3:.0f} kB; "
        f"the shared page {shared / 1e3:.0f} kB (+ static/atlas.css and atlas.js), loaded once"
    )
    print(f"  site: {files} files, {total / 1e6:.0f} MB on disk at {site}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/site"))
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--crop-size", type=int, default=24)
    parser.add_argument("--examples-k", type=int, default=10)
    parser.add_argument("--diversity", type=int, default=4)
    parser.add_argument(
        "--noise", type=float, default=0.0, help="pixel noise: 8 makes PNGs as large as renderings"
    )
    parser.add_argument("--layers", help="comma-separated subset, e.g. inception4a (default: all nine)")
    parser.add_argument("--workers", type=int, help="sprite processes (default: the builder's choice)")
    parser.add_argument(
        "--sae", type=int, metavar="FEATURES", help="build one SAE layer of FEATURES features"
    )
    parser.add_argument(
        "--before", metavar="REV", help="compare git revision REV with this tree on the largest layer"
    )
    args = parser.parse_args()
    options = SyntheticOptions(
        image_size=args.image_size,
        crop_size=args.crop_size,
        examples_k=args.examples_k,
        diversity=args.diversity,
        bins=32,
        channels_per_unit=64,
        noise=args.noise,
    )
    if args.sae:
        sae_layer(args.out / "sae", args.sae, options)
        return

    layers = googlenet_mixed_layers()
    if args.layers:
        wanted = args.layers.split(",")
        layers = [layer for layer in layers if layer.name in wanted]
        if not layers:
            parser.error(f"--layers {args.layers}: none of these is a mixed layer of GoogLeNet")
    total = sum(layer.channels for layer in layers)
    print(f"layers: {', '.join(f'{layer.name} {layer.channels}' for layer in layers)}")
    if not args.layers:
        print(f"channels: {total} (the issue says {ISSUE_CHANNEL_COUNT}; these are torchvision's counts)")
    largest = max(layers, key=lambda layer: layer.channels)
    if args.before:
        compare(args.out / "largest", largest, options, args.before, args.workers)
        return
    start = time.perf_counter()
    fresh_store(args.out / "atlas", layers, options)
    fresh_store(args.out / "largest", [largest], options)
    print(
        f"synthetic stores written in {time.perf_counter() - start:.1f} s "
        f"(images {args.image_size} px, crops {args.crop_size} px, k={args.examples_k}, "
        f"diversity={args.diversity})"
    )

    full = build_in_child(args.out / "atlas")
    rebuild = build_in_child(args.out / "atlas")
    only_largest = build_in_child(args.out / "largest")
    site = Path(full["index"]).parent
    pages = {layer.name: site / f"{layer.name}.html" for layer in layers}
    biggest_page = max(pages.items(), key=lambda item: item[1].stat().st_size)
    files, size = folder_size(site)
    print(
        f"build: {full['seconds']:.1f} s wall, {full['cpu']:.1f} s CPU in the main process "
        f"(+ {auto_workers(total)} sprite workers on {os.cpu_count()} cores) for {total} channels "
        f"({1000 * full['seconds'] / total:.1f} ms per channel); load average {load_average()}"
    )
    print(
        f"rebuild over that site (nightly case, old site removed after the switch): "
        f"{rebuild['seconds']:.1f} s wall, {rebuild['cpu']:.1f} s CPU"
    )
    print(
        f"peak RSS of the builder: {full['peak_mib']:.0f} MiB for the whole atlas; "
        f"{only_largest['peak_mib']:.0f} MiB for a store of only {largest.name} "
        f"({largest.channels} channels, built in {only_largest['seconds']:.1f} s)"
    )
    print(
        f"largest layer page: {biggest_page[0]} {biggest_page[1].stat().st_size / 1e6:.2f} MB "
        f"(index.html {(site / 'index.html').stat().st_size / 1e3:.0f} kB)"
    )
    print(f"site: {files} files, {size / 1e6:.0f} MB on disk at {site}")


if __name__ == "__main__":
    main()
