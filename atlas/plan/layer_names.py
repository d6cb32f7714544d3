"""Names of layers: a dictionary's layer is named after its base layer (no torch: the site reads these)."""

DICTIONARY_MARK = "@"


def base_layer(name: str) -> str:
    """The model layer under a (dictionary) layer name: `conv3` for `conv3@sae:1a2b3c4d`."""
    return name.split(DICTIONARY_MARK)[0]
