"""Debian containers with systemd as PID 1, for tests that need a real service manager.

PID 1 on the test machines is not systemd, so the cookbook's service recipe is exercised in
containers: `debootstrap` builds one root filesystem per Debian release (cached, see `rootfs`),
every test boots a fresh copy of it (an overlayfs whose upper layer is thrown away) with
`systemd-nspawn -b --register=no --keep-unit` on the host's network, and runs commands inside
through `nsenter`. The recipe and its pitfalls are in ENVIRONMENT.md ("systemd as PID 1").

    python -m support.containers build bookworm trixie   # what `make test-containers` runs first

Chef inside: Debian's ruby plus the gems of this repository's Gemfile.lock under /opt/chef, run
by /usr/bin/chef-client (where `knife bootstrap` looks before it would download Chef). On
bookworm the ruby is the host's 3.1, so the host's bundle (vendor/bundle) is bind-mounted
read-only: nothing to build. trixie's ruby 3.3 cannot load those native extensions, so its image
gets the same chef version installed from RubyGems once, when the image is built.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("BACKUP_AGENT_ROOTFS_CACHE", "/var/cache/backup-agent-test"))
MIRROR = os.environ.get("BACKUP_AGENT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
# Every container's cgroup and overlay lives under these names, so leftovers are recognisable.
PREFIX = "ba-test-"
RUN_DIR = Path("/run/backup-agent-test-containers")

# What every image has: systemd as init, sshd for knife, the Python the cookbook's venv uses,
# Debian's ruby for chef-client.
BASE_PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-venv", "ca-certificates",
    "ruby", "ruby-bundler",
]
# What a release needs beyond that, installed with apt once debootstrap is done (debootstrap's
# resolver does not follow virtual packages). trixie: compilers for the native gems of chef, and
# Debian's builds of the agent's compiled dependencies for Python 3.13, which the CPython 3.11
# wheelhouse cannot serve (packed as wheels by support/pack_debian_wheels.py).
SUITES: dict[str, dict[str, object]] = {
    "bookworm": {"version": "12", "packages": []},
    "trixie": {"version": "13", "packages": [
        "ruby-dev", "build-essential", "libffi-dev",
        "python3-yaml", "python3-zstandard", "python3-rpds-py", "python3-charset-normalizer",
    ]},
}
# Inside every image: where chef's bundle and the packed dependency wheels live.
CHEF_DIR = "/opt/chef"
IMAGE_WHEELS = "/opt/test-wheels"
# Bumped whenever `_customize` changes what it writes: part of the cache key.
IMAGE_RECIPE = 3


def chef_version() -> str:
    for line in (REPO / "Gemfile.lock").read_text().splitlines():
        if line.startswith("    chef (") and line.endswith(")"):
            return line.split("(", 1)[1].rstrip(")")
    raise RuntimeError("Gemfile.lock names no chef version")


def image_key(suite: str) -> str:
    """What an image is made of; a cached image with another key is rebuilt."""
    spec = SUITES[suite]
    recipe = {"suite": suite, "packages": BASE_PACKAGES + list(spec["packages"]),  # type: ignore[call-overload]
              "mirror": MIRROR, "recipe": IMAGE_RECIPE,
              "chef": chef_version() if host_bundle_unusable(suite) else "host-bundle"}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def host_bundle_unusable(suite: str) -> bool:
    """The host's bundle is built for bookworm's ruby 3.1; other releases get their own gems."""
    return suite != "bookworm"


def rootfs(suite: str) -> Path:
    """The root filesystem of `suite`, built once per machine (debootstrap, ~3 min) and reused.

    A build in progress elsewhere is waited for (a lock per suite); an image of another key
    (older package list or recipe) is removed."""
    CACHE.mkdir(parents=True, exist_ok=True)
    final = CACHE / f"rootfs-{suite}-{image_key(suite)}"
    with (CACHE / f"rootfs-{suite}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():
            return final
        for stale in CACHE.glob(f"rootfs-{suite}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        building = CACHE / f"rootfs-{suite}-building"
        shutil.rmtree(building, ignore_errors=True)
        started = time.monotonic()
        log = CACHE / f"rootfs-{suite}.log"
        with log.open("w") as out:
            proc = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", suite, str(building),
                 MIRROR],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False,
            )
        if proc.returncode != 0:
            raise RuntimeError(f"debootstrap {suite} failed (exit {proc.returncode}); log: {log}\n"
                               + log.read_text()[-3000:])
        _customize(building, suite, log)
        building.rename(final)
        print(f"containers: built {final.name} in {time.monotonic() - started:.0f}s", file=sys.stderr)
        return final


def build(suites: Sequence[str]) -> list[Path]:
    """Build (or find) several images at once: debootstrap waits on the network mostly."""
    with ThreadPoolExecutor(max_workers=len(suites) or 1) as pool:
        return list(pool.map(rootfs, suites))


def _chroot(root: Path, script: str, log: Path, env: dict[str, str] | None = None) -> None:
    """Run a shell script in `root` with /proc and /dev, in a mount namespace of its own (the
    mounts go away with it, whatever happens)."""
    wrapper = (
        f'mount -t proc proc "{root}/proc" && mount --rbind /dev "{root}/dev" && '
        f'exec chroot "{root}" /bin/sh -euxc "$0"'
    )
    base = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
            "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    with log.open("a") as out:
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", wrapper, script],
            env={**base, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"image step failed in {root} (exit {proc.returncode}); log: {log}\n"
                           + log.read_text()[-3000:])


CHEF_CLIENT_WRAPPER = f"""#!/bin/sh
# The gems of the test repository's Gemfile.lock (tests/support/containers.py), for chef-client
# and for knife bootstrap, which uses an existing /usr/bin/chef-client instead of downloading one.
export CHEF_LICENSE=accept-no-persist BUNDLE_GEMFILE={CHEF_DIR}/Gemfile BUNDLE_PATH={CHEF_DIR}/bundle
export BUNDLE_APP_CONFIG={CHEF_DIR}/bundle-config BUNDLE_FROZEN=true
exec bundle exec chef-client "$@"
"""


def _customize(root: Path, suite: str, log: Path) -> None:
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    extra = list(SUITES[suite]["packages"])  # type: ignore[call-overload]
    if extra:
        _chroot(root, f"apt-get update -qq && apt-get install -y -qq --no-install-recommends {' '.join(extra)}", log)
    # sshd only where a test starts it, on the port that test chose (host networking: a default
    # sshd would take the host's port 22).
    _chroot(root, "systemctl disable ssh.service; systemctl mask ssh.socket || true; "
                  "systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer || true",
            log)
    chef = root / CHEF_DIR.lstrip("/")
    (chef / "bundle").mkdir(parents=True, exist_ok=True)
    (chef / "bundle-config").mkdir(exist_ok=True)
    wrapper = root / "usr/bin/chef-client"
    wrapper.write_text(CHEF_CLIENT_WRAPPER)
    wrapper.chmod(0o755)
    if host_bundle_unusable(suite):
        _install_chef(root, chef, log)
    if suite == "trixie":
        _pack_debian_wheels(root, log)
    _chroot(root, "apt-get clean", log)


def _install_chef(root: Path, chef: Path, log: Path) -> None:
    """chef at the version of Gemfile.lock, with the locked versions of its dependencies: the
    repository's lock without the workstation gems (bundler keeps locked versions it can)."""
    # chef-bin holds the chef-client executable (without it `bundle exec chef-client` finds the
    # wrapper in /usr/bin again, and again).
    (chef / "Gemfile").write_text(f"source 'https://rubygems.org'\ngem 'chef', '= {chef_version()}'\n"
                                  f"gem 'chef-bin', '= {chef_version()}'\n")
    lock = (REPO / "Gemfile.lock").read_text()
    # No "BUNDLED WITH": bundler would fetch and switch to the host's bundler version.
    (chef / "Gemfile.lock").write_text(lock.split("\nBUNDLED WITH")[0] + "\n")
    # RubyGems is reached the way the host reaches it: with the host's CA bundle (a machine
    # behind a TLS-inspecting proxy trusts its CA there), for this step only.
    host_ca = Path(os.environ.get("SSL_CERT_FILE") or ssl.get_default_verify_paths().cafile
                   or "/etc/ssl/certs/ca-certificates.crt")
    shutil.copy(host_ca, root / "tmp/host-ca.crt")
    env = {"BUNDLE_GEMFILE": f"{CHEF_DIR}/Gemfile", "BUNDLE_PATH": f"{CHEF_DIR}/bundle",
           "BUNDLE_APP_CONFIG": f"{CHEF_DIR}/bundle-config", "MAKEFLAGS": f"-j{os.cpu_count() or 1}",
           "SSL_CERT_FILE": "/tmp/host-ca.crt"}
    try:
        _chroot(root, f"cd {CHEF_DIR} && bundle lock && bundle install --jobs 4 --retry 2 && "
                      "CHEF_LICENSE=accept-no-persist /usr/bin/chef-client --version", log, env)
    finally:
        (root / "tmp/host-ca.crt").unlink()


def _pack_debian_wheels(root: Path, log: Path) -> None:
    """Debian's builds of the agent's compiled dependencies as wheels (support/pack_debian_wheels.py)."""
    shutil.copy(Path(__file__).with_name("pack_debian_wheels.py"), root / "tmp/pack_wheels.py")
    _chroot(root, f"python3 /tmp/pack_wheels.py {IMAGE_WHEELS} PyYAML=yaml,_yaml zstandard=zstandard rpds-py=rpds "
                  "charset-normalizer=charset_normalizer && "
                  "rm /tmp/pack_wheels.py", log)


# --- running containers -------------------------------------------------------------------


@dataclass
class Bind:
    host: Path
    inside: str
    read_only: bool = True

    def option(self) -> str:
        return f"--bind{'-ro' if self.read_only else ''}={self.host}:{self.inside}"


def default_binds(suite: str) -> list[Bind]:
    """The host's chef bundle where the image uses it (bookworm): Gemfile, lock and gems."""
    if host_bundle_unusable(suite):
        return []
    bundle = (REPO / "vendor" / "bundle").resolve()
    if not (bundle / "ruby").is_dir():
        raise RuntimeError(f"no bundle in {bundle}: run `make bundle` first")
    return [Bind(REPO / "Gemfile", f"{CHEF_DIR}/Gemfile"), Bind(REPO / "Gemfile.lock", f"{CHEF_DIR}/Gemfile.lock"),
            Bind(bundle, f"{CHEF_DIR}/bundle")]


@dataclass
class Container:
    """One booted copy of an image; a context manager that always powers off and cleans up."""

    suite: str
    name: str
    binds: list[Bind] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix=PREFIX, dir=_run_dir())))
    proc: subprocess.Popen[bytes] | None = None
    pid: int = 0  # the container's PID 1, as seen from the host

    def __post_init__(self) -> None:
        self.name = PREFIX + self.name
        self.merged = self.workdir / "merged"
        self.log = self.workdir / "nspawn.log"

    # -- files, before and after boot --

    def path(self, inside: str) -> Path:
        """A path inside the container, as seen from the host (through the overlay)."""
        return self.merged / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    # -- lifecycle --

    def mount(self) -> None:
        lower = rootfs(self.suite)
        for d in ("upper", "work", "merged"):
            (self.workdir / d).mkdir(exist_ok=True)
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={lower},upperdir={self.workdir / 'upper'},workdir={self.workdir / 'work'}", str(self.merged)],
            check=True, capture_output=True,
        )

    def boot(self, timeout: float = 120) -> None:
        self.launch()
        self.wait_booted(timeout)

    def launch(self) -> None:
        """Start systemd-nspawn. From the main thread: the container is stopped when the thread
        that launched it ends (pdeathsig follows the thread)."""
        binds = " ".join(f"'{b.option()}'" for b in [*default_binds(self.suite), *self.binds])
        cgroups = " ".join(str(root / self.name) for root in CGROUP_ROOTS)
        # nspawn with --keep-unit puts its payload/supervisor cgroups into its caller's: give it
        # cgroups of its own, removed in stop(). It dies with the test process (pdeathsig: SIGTERM
        # makes nspawn power the container off).
        script = (
            f"for cg in {cgroups}; do mkdir -p $cg && echo $$ > $cg/cgroup.procs; done; "
            f"exec systemd-nspawn -q -D '{self.merged}' -b -M '{self.name}' --register=no --keep-unit {binds}"
        )
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["setpriv", "--pdeathsig", "TERM", "--", "/bin/bash", "-c", script],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def wait_booted(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.pid:
            self.pid = self._init_pid()
            if not self.pid:
                self._check_alive(deadline)
                time.sleep(0.1)
        # `running`, or `degraded` when some unit of the minimal image failed: both are booted.
        while True:
            state = self.run("systemctl", "is-system-running").stdout.strip()
            if state in ("running", "degraded"):
                return
            self._check_alive(deadline)
            time.sleep(0.2)

    def _check_alive(self, deadline: float) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"container {self.name} did not boot:\n{self.log.read_text()[-3000:]}")

    def _init_pid(self) -> int:
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            for pid in children.read_text().split():
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        return 0

    def run(self, *cmd: str, timeout: float = 600, input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`cmd` inside the container (all its namespaces), with a plain root environment."""
        base = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                "LANG": "C.UTF-8", "TERM": "dumb"}
        envs = [f"{k}={v}" for k, v in {**base, **(env or {})}.items()]
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", "--", "/usr/bin/env", "-i", *envs, *cmd],
            capture_output=True, text=True, timeout=timeout, input=input, check=False,
        )

    def request_stop(self) -> None:
        """Begin a clean shutdown without waiting (several containers stop at once this way)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 60) -> None:
        """Power off (SIGTERM to nspawn = a clean shutdown), then remove cgroups and overlay."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        remove_cgroups(self.name)
        unmount(self.merged)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Container:
        try:
            self.mount()
            return self
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _run_dir() -> str:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    return str(RUN_DIR)


def remove_cgroups(name: str) -> None:
    """Kill what is left in the container's cgroups and remove them, deepest first."""
    for root in CGROUP_ROOTS:
        top = root / name
        if not top.is_dir():
            continue
        for _ in range(50):
            pids = [int(p) for d in top.rglob("cgroup.procs") for p in d.read_text().split()]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def unmount(path: Path) -> None:
    if os.path.ismount(path):
        proc = subprocess.run(["umount", str(path)], capture_output=True, check=False)
        if proc.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def clean_leftovers() -> None:
    """What a killed earlier run left: its cgroups, overlays and work directories."""
    for root in CGROUP_ROOTS:
        for cg in root.glob(PREFIX + "*"):
            remove_cgroups(cg.name)
    if RUN_DIR.is_dir():
        for workdir in RUN_DIR.glob(PREFIX + "*"):
            unmount(workdir / "merged")
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "build" or any(s not in SUITES for s in argv[1:]):
        print(f"usage: python -m support.containers build {' '.join(SUITES)}", file=sys.stderr)
        return 2
    for path in build(argv[1:]):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
