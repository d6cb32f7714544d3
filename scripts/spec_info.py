"""Print a job spec's name and output folder on one line, for the shell scripts next to this one.

A spec that does not load prints its error (file, key, line, fix) and exits with status 2.
"""

import sys

from atlas.plan.spec import SpecError, load_spec

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/spec_info.py JOB.toml")
    try:
        spec = load_spec(sys.argv[1])
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(spec.name, spec.out)
