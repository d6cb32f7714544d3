"""The timeline pages from a synthetic timeline store: what they show and how big they get."""

from __future__ import annotations

from pathlib import Path

from synthetic_timeline import write_synthetic_timeline

from atlas.site import build_site


def test_timeline_pages_show_events_and_stay_small_at_ten_checkpoints(tmp_path: Path) -> None:
    write_synthetic_timeline(
        tmp_path, "conv", checkpoints=10, channels=64, image_size=16, scanned=(0, 3, 6, 9)
    )
    site = build_site(tmp_path).parent  # a timeline alone (no job run yet) still gets a site
    index = (site / "index.html").read_text()
    assert "9 died" in index and 'href="conv.timeline.5.html"' in index  # channel 5 died at step 100
    layer_page = (site / "conv.timeline.html").read_text()
    assert layer_page.count('<tr id="channel-') == 64
    assert "died at step-100.pt" in layer_page and "born at step-200.pt" in layer_page
    per_channel = len(layer_page.encode()) / 64
    assert per_channel < 2900, f"{per_channel:.0f} bytes per channel: a 1,024-channel page passes 3 MB"
    channel_page = (site / "conv.timeline.6.html").read_text()  # 6 and 7 swap at step 100
    # by index and following the match, at 0, 3, 6 (every 3rd) and 9 (also the latest)
    # and each scanned checkpoint's four top dataset examples, in rank order
    assert channel_page.count("<img ") == 2 * 4 + 4 * 4
    examples = [f"timeline/conv/ex-{p}-6-{r}.png" for p in (0, 3, 6, 9) for r in range(4)]
    assert [src for src in examples if f'src="{src}"' in channel_page] == examples
    assert channel_page.index(examples[1]) < channel_page.index(examples[2])
    assert all((site / src).stat().st_size > 0 for src in examples)
    assert len(channel_page.encode()) < 16_000  # the HTML alone; images load lazily
    assert "#7" in channel_page
    assert "http://" not in channel_page.replace('xmlns="http://www.w3.org/2000/svg"', "")
