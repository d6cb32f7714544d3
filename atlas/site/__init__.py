"""The static atlas site: index, layer pages with every channel, interactions, navigation.

`build_site(out)` turns an atlas output folder into plain files under `out/site/`::

    index.html                    model and job summary, layers with samples, what changed
    <slug>.html                   one page per layer: every channel, appendix and spectrum views,
                                  the channel view at `<slug>.html#channel-<n>`
    <slug>.interactions.html      random directions beside basis channels, pairs, interpolation
    <slug>.features.html, .js     an SAE layer's index of every feature (number, label, class, density)
    img/<slug>/<channel>.jpg      one sprite per channel: optimized images, diversity, examples
    img/<slug>/details.js         loss curves and example sources, loaded by the channel view
                                  (details.p<n>.js for page n of a paged layer)
    img/<slug>/direction-*, pair-*  interaction images
    static/atlas.css, atlas.js    the only style and script; nothing is fetched from elsewhere
    build.json                    unit keys and sprite keys, for "what changed" and for reuse
    skipped.html                  the dataset images the scan could not use, and why
    .neuron-atlas                 marker: a later build may replace this folder (atlas.store.outdir)

Slugs are made from layer names (`slugs.py`); pages are built in a sibling folder and swapped
into place in one step (`build.py`, `atlas.store.safefs.swap_folder`).
"""

from atlas.site.build import SiteError, build_site

__all__ = ["SiteError", "build_site"]
