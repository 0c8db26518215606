"""Which attached EBS volumes a job means: `all`, volume ids, or device names as the node sees them.

Device names differ between the API and the kernel: the API says `/dev/sdf`, a Xen guest sees
`/dev/xvdf`, a Nitro guest `/dev/nvme1n1`, whose controller serial is the volume id without its
dash (`vol0123...`). The decision is pure; only the sysfs read touches the system.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_VOLUME_IN_NAME = re.compile(r"vol-?([0-9a-f]{8,17})\b")
_NVME = re.compile(r"^(nvme\d+n\d+)(p\d+)?$")
_PARTITION = re.compile(r"^((?:sd|xvd|hd)[a-z]+)\d+$")


class SelectionError(ValueError):
    """`index` is the position in the job's `volumes` list (None: the list as a whole)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Attached:
    device: str
    volume_id: str
    root: bool


def attached_volumes(instance: dict[str, Any]) -> list[Attached]:
    """The EBS volumes of a DescribeInstances instance, root first."""
    root = instance.get("RootDeviceName")
    out = [
        Attached(m["DeviceName"], m["Ebs"]["VolumeId"], _same_device(m["DeviceName"], root or ""))
        for m in instance.get("BlockDeviceMappings", [])
        if m.get("Ebs", {}).get("VolumeId")
    ]
    return sorted(out, key=lambda a: (not a.root, a.device))


def nvme_serial_reader(sys_root: str | Path = "/sys") -> Callable[[str], str | None]:
    """A lookup from a kernel NVMe name (`nvme1n1`) to the EBS volume id in its serial."""

    def read(name: str) -> str | None:
        try:
            serial = (Path(sys_root) / "block" / name / "device" / "serial").read_text().strip()
        except OSError:
            return None
        m = _VOLUME_IN_NAME.fullmatch(serial)
        return f"vol-{m[1]}" if m else None

    return read


def select(attached: list[Attached], wanted: str | list[str], *, exclude_root: bool,
           nvme_serial: Callable[[str], str | None],
           resolve: Callable[[str], str] = os.path.realpath) -> tuple[list[Attached], list[str]]:
    """The chosen volumes (in attachment order) and warnings; SelectionError names the bad entry."""
    warnings: list[str] = []
    if wanted == "all":
        chosen = list(attached)
    else:
        by_id = {a.volume_id: a for a in attached}
        picked: dict[str, Attached] = {}
        for i, item in enumerate(wanted):
            vol = item if item.startswith("vol-") else _device_volume(item, attached, nvme_serial, resolve)
            if vol is None:
                raise SelectionError(f"device {item} is not an EBS volume attached to this instance "
                                     f"(attached: {_listing(attached)})", i)
            if vol not in by_id:
                raise SelectionError(f"{vol} is not attached to this instance (attached: {_listing(attached)})", i)
            picked[vol] = by_id[vol]
        chosen = [a for a in attached if a.volume_id in picked]
    if exclude_root:
        roots = [a for a in chosen if a.root]
        if roots and wanted != "all":
            warnings.append(f"exclude_root: skipping the root volume {roots[0].volume_id} ({roots[0].device})")
        chosen = [a for a in chosen if not a.root]
    if not chosen:
        raise SelectionError("no volumes left to snapshot" + (" (exclude_root removed the only one)"
                                                             if exclude_root and attached else ""))
    return chosen, warnings


def free_devices(used: Iterable[str]) -> list[str]:
    """Device names AWS recommends for data volumes (/dev/sdf-sdp) that are not taken yet."""
    taken = list(used)
    return [dev for dev in (f"/dev/sd{c}" for c in "fghijklmnop")
            if not any(_same_device(dev, t) for t in taken)]


def _device_volume(device: str, attached: list[Attached], nvme_serial: Callable[[str], str | None],
                   resolve: Callable[[str], str]) -> str | None:
    for a in attached:
        if _same_device(a.device, device):
            return a.volume_id
    name = device.rsplit("/", 1)[-1]
    m = _VOLUME_IN_NAME.search(name)  # /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc...
    if m:
        return f"vol-{m[1]}"
    nvme = _NVME.match(name)
    if nvme:
        return nvme_serial(nvme[1])
    real = resolve(device)  # udev links such as /dev/sdf -> nvme1n1 on Nitro
    if real != device:
        return _device_volume(real, attached, nvme_serial, lambda p: p)
    return None


def _canonical(device: str) -> str:
    name = device.removeprefix("/dev/")
    if name.startswith("xvd"):
        name = "sd" + name[3:]
    return name


def _same_device(a: str, b: str) -> bool:
    """`/dev/sdf` = `/dev/xvdf`; a root given as `/dev/sda1` also matches `/dev/xvda`."""
    ca, cb = _canonical(a), _canonical(b)
    if ca == cb:
        return True
    pa, pb = _PARTITION.match(ca), _PARTITION.match(cb)
    return (pa[1] if pa else ca) == (pb[1] if pb else cb)


def _listing(attached: list[Attached]) -> str:
    return ", ".join(f"{a.device} {a.volume_id}" for a in attached) or "none"
