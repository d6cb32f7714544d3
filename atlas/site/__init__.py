"""The static atlas site: index, layer pages with every channel, interactions, navigation."""

from atlas.site.build import SiteError, build_site

__all__ = ["SiteError", "build_site"]
