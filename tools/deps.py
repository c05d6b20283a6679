"""Prints requirement lists from pyproject.toml, space-separated, for the Makefile:
`deps.py build` (build-system requires) and `deps.py <extra>` (an optional-dependency group).
The output is word-split unquoted by the shell ($(...)), so requirements must contain no spaces."""
import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    meta = tomllib.load(f)
reqs = []
for group in sys.argv[1:]:
    reqs += meta["build-system"]["requires"] if group == "build" else meta["project"]["optional-dependencies"][group]
bad = [r for r in reqs if " " in r]
if bad:
    sys.exit(f"deps.py: requirements with spaces cannot pass through the shell unquoted: {bad}")
print(" ".join(reqs))
