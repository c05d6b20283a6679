"""cur family (DESIGN section 3): not implemented yet."""
from __future__ import annotations

__all__: list[str] = []
