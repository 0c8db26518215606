"""Pack Debian's installed builds of Python distributions as wheels (run inside a test image).

    python3 pack_debian_wheels.py OUT_DIR DIST=module[,module...] ...

The wheelhouse has CPython 3.11 wheels only; a container with another Python (trixie: 3.13)
gets the agent's compiled dependencies from these wheels of Debian's own files and versions, so
its pip can still install from a dependency mirror without any index (tests/support/containers.py).
Debian drops the RECORD of its packages: the files are those of the named top-level modules.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import sys
import zipfile
from pathlib import Path

SITE = Path("/usr/lib/python3/dist-packages")


def pack(out: Path, name: str, modules: list[str]) -> Path:
    dist = importlib.metadata.distribution(name)
    project, version = dist.metadata["Name"], dist.version
    norm = project.replace("-", "_").lower()
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    info = f"{norm}-{version}.dist-info"
    record: list[str] = []
    wheel = out / f"{norm}-{version}-{tag}-{tag}-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:

        def add(arcname: str, data: bytes) -> None:
            archive.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arcname},sha256={digest},{len(data)}")

        for module in modules:
            for top in [*SITE.glob(module), *SITE.glob(module + ".*")]:
                for path in sorted([top] if top.is_file() else top.rglob("*")):
                    if path.is_file() and "__pycache__" not in path.parts:
                        add(str(path.relative_to(SITE)), path.read_bytes())
        add(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n".encode())
        add(f"{info}/WHEEL", (f"Wheel-Version: 1.0\nGenerator: backup-agent-tests\nRoot-Is-Purelib: false\n"
                              f"Tag: {tag}-{tag}-linux_x86_64\n").encode())
        record.append(f"{info}/RECORD,,")
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for spec in argv[1:]:
        name, _, modules = spec.partition("=")
        print(pack(out, name, modules.split(",")).name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
