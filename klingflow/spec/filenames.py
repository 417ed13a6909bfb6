"""Names that become file names: a step id (ID.mp4, ID.first.png, ID.last.png), the
pipeline's name (runs/NAME/) and an output's name. The schema keeps them short slugs;
this refuses the slugs that no Windows machine can create a file for, so a pipeline
means the same thing on every machine."""

from __future__ import annotations

RESERVED = frozenset(("con", "prn", "aux", "nul", *(f"com{n}" for n in range(1, 10)),
                      *(f"lpt{n}" for n in range(1, 10))))
"""Windows device names: no file may be called so, whatever its extension."""


def file_name_problem(name: str, what: str) -> str | None:
    """Why `name` cannot name files (`what` says what it is: `a step id`...); None if it can."""
    if name.lower() in RESERVED:
        return (f"'{name}' cannot be {what}: Windows reserves it for a device, so no file "
                "or folder may be named after it; choose another")
    return None
