"""A pod probe from a service's state file: ``python -m fl.kube.probe FILE STATUS…``.

Exit 0 when ``FILE`` (the ``state.json`` the institution service keeps) says one of the
given statuses, 1 otherwise (missing, unreadable, or another status): the node listens
on no port a kubelet could probe, but its state file says whether it is connected.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def check(path: Path, accepted: set[str]) -> bool:
    """Whether the state file at ``path`` reports a status in ``accepted``."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("status") in accepted


def main(argv: list[str] | None = None) -> int:
    """The probe's exit status."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python -m fl.kube.probe STATE_FILE STATUS [STATUS…]", file=sys.stderr)
        return 2
    return 0 if check(Path(args[0]), set(args[1:])) else 1


if __name__ == "__main__":
    raise SystemExit(main())
