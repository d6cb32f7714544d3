"""One home per unit family: each module registers its kinds (atlas.plan.kinds) beside their
implementation. Importing this package registers every built-in kind."""

from atlas.kinds import (
    features,  # noqa: F401
    render,  # noqa: F401
    stability,  # noqa: F401
    trust,  # noqa: F401
)
from atlas.kinds.actatlas import stage  # noqa: F401
from atlas.kinds.examples import units  # noqa: F401
from atlas.kinds.timeline import probe  # noqa: F401
