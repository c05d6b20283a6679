"""Prints requirement lists from pyproject.toml, one shell word each, for the Makefile:
`deps.py build` (build-system requires) and `deps.py <extra>` (an optional-dependency group)."""
import shlex
import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    meta = tomllib.load(f)
reqs = []
for group in sys.argv[1:]:
    reqs += meta["build-system"]["requires"] if group == "build" else meta["project"]["optional-dependencies"][group]
print(" ".join(shlex.quote(r) for r in reqs))
