"""Check that this Python environment holds exactly the versions of the lock (`make install` runs it).

    python .ci/check_lock.py requirements-lock.txt            # exit 1 on a missing or different version
    python .ci/check_lock.py --strict requirements-lock.txt   # CI: also on a package the lock lacks
    python .ci/check_lock.py --report requirements-lock.txt   # list the differences, exit 0

The lock is universal (`uv pip compile --universal`): an entry whose environment marker does not hold
here (`sys_platform == 'win32'`, another Python) is not expected. The project itself (installed editable)
is not in the lock.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "detr-panoptic"


def locked_versions(lock: Path) -> dict[str, str]:
    """`{canonical name: version}` of the lock's entries whose marker holds in this environment."""
    text = lock.read_text(encoding="utf-8").replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line.split(" --hash", 1)[0])
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{lock}: {line!r} is not pinned"
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def installed_versions() -> dict[str, str]:
    """`{canonical name: version}` of the distributions this interpreter sees, the project excluded."""
    found = {canonicalize_name(dist.metadata["Name"]): dist.version for dist in distributions()}
    found.pop(PROJECT, None)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", type=Path, help="the lock file (requirements-lock.txt)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--strict", action="store_true", help="a package that the lock lacks is an error too")
    mode.add_argument("--report", action="store_true", help="list the differences and exit 0")
    args = parser.parse_args()

    pins, found = locked_versions(args.lock), installed_versions()
    wrong = [f"{name} {found.get(name, 'missing')} (locked {pins[name]})" for name in sorted(pins)
             if found.get(name) != pins[name]]
    extra = [f"{name} {found[name]}" for name in sorted(set(found) - set(pins))]
    if args.report:
        print("\n".join(wrong + [f"{line} (not in the lock)" for line in extra]) or "none")
        return 0
    if extra:
        print(f"{args.lock}: installed but not locked: {', '.join(extra)}", file=sys.stderr)
    if wrong or (extra and args.strict):
        if wrong:
            print(f"{args.lock}: not the locked version: {', '.join(wrong)}", file=sys.stderr)
        return 1
    print(f"{len(pins)} packages, exactly as locked in {args.lock}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
