"""Build the operator's OCI image from the package registries only, with no container engine.

    python deploy/image/build.py                 build dist/dedicap_<version>.oci.tar; print
                                                 the digest (--docker-archive: also a
                                                 docker-archive beside it)
    python deploy/image/build.py --verify        build twice from scratch; fail unless both
                                                 archives have the same digest
    python deploy/image/build.py --lock-debian   resolve the Debian packages again and rewrite
                                                 debian.lock (then rebuild)

The image has three layers, each a deterministic tar (sorted names, owner 0, no atime/ctime,
mtimes clamped to SOURCE_DATE_EPOCH), so the same inputs give the same digest:

1. **base**: Debian bookworm's `python3.11-minimal` and `libpython3.11-stdlib` with what they
   depend on, at the versions `debian.lock` pins, unpacked by `mmdebstrap --variant=extract` (no
   maintainer scripts, so no shell, no dpkg and no apt end up in it); the standard library
   byte-compiled; `/etc/passwd` with the non-root user 65532. Its clock is `debian.lock`'s epoch.
2. **deps**: the Python packages `requirements.lock` pins (with their hashes), binary wheels
   only, installed by pip (itself pinned in `build-tools.lock`) run by the image's own
   interpreter under bubblewrap without network. Same clock as the base.
3. **app**: the `dedicap` package only (not the local stack of deploy/local), as a wheel built
   from this checkout. Its clock is the last commit's time (or $SOURCE_DATE_EPOCH).

umoci adds the layers to an OCI layout and writes the configuration (user 65532, entrypoint
`dedicap`, command `run`); the layout is packed into an OCI archive that `skopeo copy` and
`podman load` read; with --docker-archive skopeo writes a docker-archive (`docker load`) beside
it. The base and deps layers are cached under ~/.cache/dedicap/image keyed by their inputs, so a
rebuild after a code change only redoes the app layer.

Needs root (mmdebstrap, bubblewrap binds), Debian's mmdebstrap, umoci, skopeo, bubblewrap, and
network access to Debian's mirror and PyPI for a cold build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CACHE = Path(os.environ.get("DEDICAP_CACHE", Path.home() / ".cache" / "dedicap")) / "image"
DIST = ROOT / "dist"

DEBIAN_LOCK = HERE / "debian.lock"
REQUIREMENTS_LOCK = HERE / "requirements.lock"
BUILD_TOOLS_LOCK = HERE / "build-tools.lock"

SUITE = "bookworm"
# The machine's own Debian sources (its mirror and security suite); the pins make the result
# independent of which mirror serves them. $DEDICAP_DEBIAN_SOURCES names another file.
SOURCES = ("/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list")
# What the operator needs from Debian; apt adds their dependencies. `install-info` satisfies
# readline-common's "dpkg | install-info", so dpkg (and tar) stay out.
DEBIAN_ROOTS = ("python3.11-minimal", "libpython3.11-stdlib", "base-files", "install-info")
PYTHON = "/usr/bin/python3.11"
SITE = "/usr/local/lib/python3.11/dist-packages"
UID = 65532
# Files of the extracted packages that nothing at run time uses: documentation, and the two
# helper programs that only satisfy dependencies (an awk for base-files, install-info).
TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/lintian",
        "usr/share/locale", "usr/bin/mawk", "usr/bin/install-info", "usr/bin/ginstall-info",
        "etc/apt", "var/lib/apt", "var/cache/apt", "var/log", "etc/hostname",
        "etc/resolv.conf")
# Bumped when the recipe of a cached layer changes, so stale cache entries are not reused.
RECIPE = "3"


def log(msg: str) -> None:
    print(f"==> {msg}", file=sys.stderr, flush=True)


def run(*argv: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
        capture: bool = False) -> str:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, check=False, text=True,
                          env={**os.environ, **(env or {})},
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None)
    if proc.returncode != 0:
        detail = (proc.stderr or "")[-3000:] if capture else ""
        raise SystemExit(f"build failed: {' '.join(str(a) for a in argv[:3])} ... exited "
                         f"{proc.returncode}\n{detail}")
    return proc.stdout or ""


def sha256(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class DebianLock:
    epoch: int
    packages: tuple[str, ...]  # name=version

    @classmethod
    def read(cls, path: Path = DEBIAN_LOCK) -> DebianLock:
        epoch = 0
        packages = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if m := re.match(r"#\s*epoch:\s*(\d+)", line):
                epoch = int(m.group(1))
            elif line and not line.startswith("#"):
                if "=" not in line:
                    raise SystemExit(f"{path}: '{line}' is not name=version")
                packages.append(line)
        if not epoch or not packages:
            raise SystemExit(f"{path}: needs an '# epoch: N' line and name=version lines")
        return cls(epoch, tuple(sorted(packages)))

    def write(self, path: Path = DEBIAN_LOCK) -> None:
        when = datetime.fromtimestamp(self.epoch, UTC).strftime("%Y-%m-%d")
        path.write_text(
            "# Debian packages of the image's base layer, pinned by version: exactly these are\n"
            f"# unpacked (deploy/image/build.py checks). Roots: {', '.join(DEBIAN_ROOTS)}.\n"
            "# Regenerate with `make image-lock-debian` when the mirror no longer has a version\n"
            "# (Debian replaces packages with security updates).\n"
            f"# epoch: {self.epoch}  (clock of the base and deps layers: {when})\n"
            + "".join(f"{p}\n" for p in self.packages))


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def chart_image() -> tuple[str, str]:
    """The chart's default image: (repository, tag); the archive carries exactly that tag."""
    import yaml  # the project's dependency; this script runs from its virtual environment

    values = yaml.safe_load((ROOT / "charts/dedicap/values.yaml").read_text())
    chart = yaml.safe_load((ROOT / "charts/dedicap/Chart.yaml").read_text())
    tag = values["image"].get("tag") or chart["appVersion"]
    if str(chart["appVersion"]) != project_version():
        raise SystemExit(f"Chart.yaml appVersion {chart['appVersion']} differs from the "
                         f"package version {project_version()} in pyproject.toml")
    return str(values["image"]["repository"]), str(tag)


def commit_epoch() -> int:
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    out = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=ROOT, capture_output=True,
                         text=True, check=False).stdout.strip()
    return int(out) if out else 0


# ----------------------------------------------------------------------------- tar


def pack(tree: Path, out: Path, epoch: int) -> None:
    """A deterministic tar of `tree`: the same files give the same bytes."""
    tmp = out.with_suffix(".tmp")
    run("tar", "--create", "--file", tmp, "--directory", tree, "--sort=name", "--format=posix",
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
        f"--mtime=@{epoch}", "--clamp-mtime", "--owner=0", "--group=0", "--numeric-owner",
        "--no-xattrs", "--no-acls", "--no-selinux", ".")
    tmp.replace(out)


def unpack(layer: Path, into: Path) -> None:
    run("tar", "--extract", "--file", layer, "--directory", into, "--same-owner",
        "--numeric-owner", "--preserve-permissions")


def sandbox(rootfs: Path, *argv: str, binds: Sequence[tuple[Path, str]] = (),
            ro_binds: Sequence[tuple[Path, str]] = ()) -> None:
    """Run `argv` with `rootfs` as /, no network: the image's interpreter installs into itself."""
    args: list[str | Path] = ["bwrap", "--bind", rootfs, "/", "--dev", "/dev", "--proc",
                              "/proc", "--tmpfs", "/tmp", "--unshare-net", "--unshare-pid",
                              "--die-with-parent", "--clearenv", "--setenv", "PATH",
                              "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME", "/tmp",
                              "--setenv", "LC_ALL", "C.UTF-8"]
    for src, dst in binds:
        args += ["--bind", src, dst]
    for src, dst in ro_binds:
        args += ["--ro-bind", src, dst]
    run(*args, "--", *argv)


def compile_tree(rootfs: Path, directory: str, strip: str = "") -> None:
    """Byte-code for a read-only root filesystem. `unchecked-hash` pycs do not record source
    mtimes, so they are the same on every build."""
    extra = ["-s", strip, "-p", "/"] if strip else []
    sandbox(rootfs, PYTHON, "-m", "compileall", "-q", "-j", "1", "-o", "0",
            "--invalidation-mode", "unchecked-hash", *extra, directory)


# ----------------------------------------------------------------------------- layers


def debian_sources() -> str:
    for candidate in (os.environ.get("DEDICAP_DEBIAN_SOURCES", ""), *SOURCES):
        if candidate and Path(candidate).is_file():
            return candidate
    raise SystemExit("no Debian apt sources found: set DEDICAP_DEBIAN_SOURCES to a sources "
                     "file (one-line or deb822) for bookworm")


def mmdebstrap(target: Path, packages: Sequence[str]) -> None:
    run("mmdebstrap", "--quiet", "--variant=extract", "--format=directory", "--mode=root",
        "--architectures=amd64", "--components=main", "--skip=cleanup/apt/cache",
        f"--include={','.join(packages)}", SUITE, target, debian_sources())


def extracted_packages(rootfs: Path) -> list[str]:
    """name=version of every .deb that was unpacked (from their control files)."""
    out = []
    for deb in sorted((rootfs / "var/cache/apt/archives").glob("*.deb")):
        fields = run("dpkg-deb", "--show", "--showformat=${Package}=${Version}\n", deb,
                     capture=True)
        out.append(fields.strip())
    return sorted(out)


def lock_debian() -> None:
    """Resolve DEBIAN_ROOTS at the mirror's current versions and rewrite debian.lock."""
    with tempfile.TemporaryDirectory(prefix="dedicap-image-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        mmdebstrap(rootfs, DEBIAN_ROOTS)
        packages = extracted_packages(rootfs)
    DebianLock(int(datetime.now(UTC).timestamp()), tuple(packages)).write()
    log(f"wrote {DEBIAN_LOCK} ({len(packages)} packages)")


def base_layer(lock: DebianLock) -> Path:
    key = sha256(RECIPE, DEBIAN_LOCK.read_text())[:16]
    out = CACHE / "layers" / f"base-{key}.tar"
    if out.exists():
        return out
    log(f"base layer: {len(lock.packages)} Debian packages (debian.lock)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dedicap-image-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        mmdebstrap(rootfs, lock.packages)
        got = extracted_packages(rootfs)
        if got != sorted(lock.packages):
            extra = sorted(set(got) - set(lock.packages))
            missing = sorted(set(lock.packages) - set(got))
            raise SystemExit(f"the mirror resolved other packages than debian.lock pins: "
                             f"unexpected {extra}, missing {missing}; run "
                             "`make image-lock-debian` if that is intended")
        for path in TRIM:
            target = rootfs / path
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        for directory in ("dev", "proc", "sys", "run", "tmp"):
            shutil.rmtree(rootfs / directory, ignore_errors=True)
            (rootfs / directory).mkdir()
        (rootfs / "tmp").chmod(0o1777)
        (rootfs / "etc/passwd").write_text(
            "root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"dedicap:x:{UID}:{UID}:dedicap:/nonexistent:/usr/sbin/nologin\n")
        (rootfs / "etc/group").write_text(f"root:x:0:\ndedicap:x:{UID}:\n")
        compile_tree(rootfs, "/usr/lib/python3.11")
        pack(rootfs, out, lock.epoch)
    return out


def download_wheels(lock: Path, into: Path) -> None:
    """Binary wheels only (no compiler anywhere), checked against the lock's hashes."""
    into.mkdir(parents=True, exist_ok=True)
    env = {"PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": os.devnull}
    run(sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--no-deps", "--only-binary=:all:", "--require-hashes", "--dest", into, "-r", lock,
        env=env)


def pip_wheel() -> Path:
    wheels = CACHE / "wheels"
    download_wheels(BUILD_TOOLS_LOCK, wheels)
    found = sorted(wheels.glob("pip-*.whl"))
    if not found:
        raise SystemExit("pip's wheel did not download")
    return found[-1]


def install_layer(rootfs: Path, out_tree: Path, wheels: Path, args: Sequence[str]) -> None:
    """pip, run by the image's own python3.11, installs into `out_tree` (mounted at /out) with
    only the wheels in `wheels` (no index, no network), then byte-compiles what it wrote."""
    pip = pip_wheel()
    out_tree.mkdir()
    sandbox(rootfs, PYTHON, f"/pip/{pip.name}/pip", "install", "--quiet", "--no-index",
            "--disable-pip-version-check", "--no-compile", "--no-warn-script-location",
            "--root-user-action=ignore", "--find-links", "/wheels", "--root", "/out", *args,
            binds=[(out_tree, "/out")],
            ro_binds=[(wheels, "/wheels"), (pip.parent, "/pip"), (HERE, "/locks")])
    # `-s /out -p /`: the byte-code names the paths the files have in the image.
    sandbox(rootfs, PYTHON, "-m", "compileall", "-q", "-j", "1", "-o", "0",
            "--invalidation-mode", "unchecked-hash", "-s", "/out", "-p", "/", "/out",
            binds=[(out_tree, "/out")])


def deps_layer(base: Path, lock: DebianLock) -> Path:
    key = sha256(RECIPE, base.name, REQUIREMENTS_LOCK.read_text(),
                 BUILD_TOOLS_LOCK.read_text())[:16]
    out = CACHE / "layers" / f"deps-{key}.tar"
    if out.exists():
        return out
    log("deps layer: the Python packages of requirements.lock")
    wheels = CACHE / "wheels"
    download_wheels(REQUIREMENTS_LOCK, wheels)
    with tempfile.TemporaryDirectory(prefix="dedicap-image-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir()
        unpack(base, rootfs)
        tree = Path(tmp) / "tree"
        install_layer(rootfs, tree, wheels, ["--no-deps", "--require-hashes", "-r",
                                             f"/locks/{REQUIREMENTS_LOCK.name}"])
        pack(tree, out, lock.epoch)
    return out


def build_wheel(into: Path, epoch: int) -> Path:
    """The `dedicap` package alone: pyproject.toml also packs the local stack (deploy/local)
    for development, which the image leaves out."""
    tools = CACHE / f"build-tools-{sha256(BUILD_TOOLS_LOCK.read_text())[:12]}"
    if not (tools / "bin" / "pip").exists():
        wheels = CACHE / "wheels"
        download_wheels(BUILD_TOOLS_LOCK, wheels)
        run("/usr/bin/python3.11", "-m", "venv", "--without-pip", tools)
        run(tools / "bin/python", f"{pip_wheel()}/pip", "install", "--quiet", "--no-index",
            "--find-links", wheels, "--require-hashes", "-r", BUILD_TOOLS_LOCK,
            env={"PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": os.devnull})
    stage = into / "src"
    shutil.copytree(ROOT / "operator", stage / "operator",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(ROOT / "README.md", stage / "README.md")
    text = (ROOT / "pyproject.toml").read_text()
    only_operator = text.replace('where = ["operator", "deploy/local"]', 'where = ["operator"]')
    only_operator = re.sub(r'(?m)^dedicap-local = .*\n', "", only_operator)
    parsed = tomllib.loads(only_operator)
    if (parsed["tool"]["setuptools"]["packages"]["find"]["where"] != ["operator"]
            or "dedicap-local" in parsed["project"]["scripts"]):
        raise SystemExit("pyproject.toml's package layout changed: update build_wheel()")
    (stage / "pyproject.toml").write_text(only_operator)
    dist = into / "wheel"
    run(tools / "bin/python", "-m", "pip", "wheel", "--quiet", "--no-deps",
        "--no-build-isolation", "--wheel-dir", dist, stage,
        env={"SOURCE_DATE_EPOCH": str(epoch), "PIP_FIND_LINKS": "",
             "PIP_CONFIG_FILE": os.devnull})
    (wheel,) = dist.glob("dedicap-*.whl")
    return wheel


def app_layer(base: Path, deps: Path, work: Path, epoch: int) -> Path:
    log("app layer: the dedicap wheel of this checkout")
    wheel = build_wheel(work, epoch)
    rootfs = work / "rootfs"
    rootfs.mkdir()
    unpack(base, rootfs)
    unpack(deps, rootfs)
    tree = work / "tree"
    install_layer(rootfs, tree, wheel.parent, ["--no-deps", f"/wheels/{wheel.name}"])
    out = work / "app.tar"
    pack(tree, out, epoch)
    # Every requirement of every installed package is met by the pinned ones.
    unpack(out, rootfs)
    pip = pip_wheel()
    sandbox(rootfs, PYTHON, f"/pip/{pip.name}/pip", "check", "--disable-pip-version-check",
            ro_binds=[(pip.parent, "/pip")])
    return out


# ----------------------------------------------------------------------------- image


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def assemble(layers: Sequence[tuple[Path, int, str]], layout: Path, tag: str, epoch: int,
             version: str) -> None:
    ref = f"{layout}:{tag}"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", ref)
    for path, when, what in layers:
        run("umoci", "raw", "add-layer", "--image", ref, "--history.created", iso(when),
            "--history.created_by", what, path)
    run("umoci", "config", "--image", ref, "--no-history", "--created", iso(epoch),
        "--author", "dedicap", "--os", "linux", "--architecture", "amd64",
        "--config.user", f"{UID}:{UID}", "--config.workingdir", "/",
        "--config.entrypoint", "/usr/local/bin/dedicap", "--config.cmd", "run",
        "--config.env", "PATH=/usr/local/bin:/usr/bin",
        "--config.env", "PYTHONDONTWRITEBYTECODE=1", "--config.env", "PYTHONUNBUFFERED=1",
        "--config.env", "LC_ALL=C.UTF-8",
        "--config.label", "org.opencontainers.image.title=dedicap",
        "--config.label", f"org.opencontainers.image.version={version}",
        "--config.label", "org.opencontainers.image.licenses=Apache-2.0",
        "--config.label", f"org.opencontainers.image.created={iso(epoch)}")
    run("umoci", "gc", "--layout", layout)


def manifest_digest(layout: Path) -> str:
    index = json.loads((layout / "index.json").read_text())
    return str(index["manifests"][0]["digest"])


def build(out_dir: Path = DIST, *, docker_archive: bool = False) -> tuple[Path, str]:
    lock = DebianLock.read()
    repository, tag = chart_image()
    epoch = commit_epoch()
    base = base_layer(lock)
    deps = deps_layer(base, lock)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dedicap-image-") as tmp:
        work = Path(tmp)
        app = app_layer(base, deps, work, epoch)
        layout = work / "layout"
        assemble([(base, lock.epoch, "debian.lock: Debian packages"),
                  (deps, lock.epoch, "requirements.lock: Python packages"),
                  (app, epoch, f"dedicap {tag} wheel")], layout, tag, epoch, tag)
        digest = manifest_digest(layout)
        archive = out_dir / f"dedicap_{tag}.oci.tar"
        pack(layout, archive, epoch)
        docker = out_dir / f"dedicap_{tag}.docker.tar"
        docker.unlink(missing_ok=True)
        if docker_archive:
            # Uncompressed layers (as `docker save` writes them): several times the OCI archive.
            run("skopeo", "--insecure-policy", "copy", "--quiet",
                f"oci-archive:{archive}:{tag}", f"docker-archive:{docker}:{repository}:{tag}")
    (out_dir / f"dedicap_{tag}.digest").write_text(digest + "\n")
    log(f"{archive}: {repository}:{tag} {digest}")
    return archive, digest


def verify() -> int:
    """Two builds from scratch (no cached layers) must give the same manifest digest."""
    global CACHE
    digests = []
    for i in range(2):
        with tempfile.TemporaryDirectory(prefix="dedicap-image-verify-") as tmp:
            CACHE = Path(tmp) / "cache"
            wheels = Path(os.environ.get("DEDICAP_CACHE", Path.home() / ".cache" / "dedicap"))
            # Downloads may be shared: they are checked against the locks' hashes.
            (CACHE).mkdir()
            (CACHE / "wheels").symlink_to(wheels / "image" / "wheels")
            _, digest = build(Path(tmp) / "dist")
            digests.append(digest)
            log(f"build {i + 1}: {digest}")
    if digests[0] != digests[1]:
        print(f"NOT reproducible: {digests[0]} != {digests[1]}", file=sys.stderr)
        return 1
    print(f"reproducible: both builds {digests[0]}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--verify", action="store_true",
                      help="build twice with empty caches and compare the digests")
    mode.add_argument("--lock-debian", action="store_true",
                      help="resolve the Debian packages again and rewrite debian.lock")
    parser.add_argument("--out", type=Path, default=DIST, help="directory for the archives")
    parser.add_argument("--docker-archive", action="store_true",
                        help="also write a docker-archive (for `docker load`) beside it")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("building the image needs root (mmdebstrap, bubblewrap)")
    if args.lock_debian:
        lock_debian()
        return 0
    if args.verify:
        return verify()
    build(args.out, docker_archive=args.docker_archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
