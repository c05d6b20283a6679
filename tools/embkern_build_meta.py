"""scikit-build-core metadata provider: pins the wheel's torch requirement to the torch release it is
built against (as FBGEMM does), since the extension links that release's C++ ABI."""
from __future__ import annotations

import re


def dynamic_metadata(field, settings=None, project=None):
    if field != "dependencies":
        raise RuntimeError(f"embkern_build_meta only provides 'dependencies', not {field!r}")
    import torch  # the torch this build links against (pip install --no-build-isolation)

    release = re.match(r"\d+\.\d+\.\d+", torch.__version__).group(0)
    return ["numpy>=1.24", f"torch=={release}"]
