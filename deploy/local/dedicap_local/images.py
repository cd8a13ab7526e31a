"""The local stack's image store: what a node's container runtime would have pulled.

`load(run_dir, archive)` takes an OCI archive (what `make image` writes), unpacks its root
filesystem with umoci into the stack's run dir (`images/<manifest digest>/`) and records the
image reference that names it; unpacked images no reference names any more are removed. The
process nodes (kubelet.py) then run a pod whose container names that reference from that root
filesystem (`resolve`), with the image's own entrypoint, command, environment, user and working
directory where the pod does not set them.

    dedicap-local load-image dist/dedicap_0.1.0.oci.tar      # as ghcr.io/dedicap/dedicap:0.1.0
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dedicap_local.stack import LOCAL_DIR

REF_NAME = "org.opencontainers.image.ref.name"
CHART_VALUES = LOCAL_DIR.parent.parent / "charts" / "dedicap" / "values.yaml"


@dataclass(frozen=True)
class Image:
    """An unpacked image: its root filesystem and the parts of its configuration a container
    runtime uses."""

    reference: str
    digest: str
    rootfs: Path
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    user: str = ""
    working_dir: str = ""
    labels: dict[str, str] = field(default_factory=dict)


def _images_dir(run_dir: Path) -> Path:
    return run_dir / "images"


def _index_file(run_dir: Path) -> Path:
    return _images_dir(run_dir) / "index.json"


def _read_index(run_dir: Path) -> dict[str, str]:
    try:
        data = json.loads(_index_file(run_dir).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def default_repository() -> str:
    """The repository the chart's default image names (the archive carries only a tag)."""
    values = yaml.safe_load(CHART_VALUES.read_text())
    return str(values["image"]["repository"])


def _blob(layout: Path, digest: str) -> dict[str, Any]:
    algorithm, hexdigest = digest.split(":", 1)
    data: dict[str, Any] = json.loads((layout / "blobs" / algorithm / hexdigest).read_text())
    return data


def load(run_dir: Path, archive: Path, reference: str | None = None) -> Image:
    """Unpack `archive` (an OCI archive with one tagged image) and make `reference` (default:
    the chart's repository with the archive's tag) name it on this stack."""
    with tempfile.TemporaryDirectory(prefix="dedicap-image-load-") as tmp:
        layout = Path(tmp) / "layout"
        layout.mkdir()
        subprocess.run(["tar", "--extract", "--file", str(archive), "--directory", str(layout),
                        "--no-same-owner"], check=True, capture_output=True)
        index = json.loads((layout / "index.json").read_text())
        manifests = index.get("manifests") or []
        if len(manifests) != 1:
            raise ValueError(f"{archive}: expected one image in the archive, found "
                             f"{len(manifests)}")
        descriptor = manifests[0]
        digest = str(descriptor["digest"])
        tag = str((descriptor.get("annotations") or {}).get(REF_NAME, ""))
        if not tag:
            raise ValueError(f"{archive}: the image has no tag ({REF_NAME})")
        manifest = _blob(layout, digest)
        config = _blob(layout, str(manifest["config"]["digest"])).get("config") or {}
        store = _images_dir(run_dir)
        target = store / digest.replace(":", "-")
        if not (target / "rootfs").is_dir():
            store.mkdir(parents=True, exist_ok=True)
            bundle = Path(tempfile.mkdtemp(prefix=".unpack-", dir=store))
            try:
                shutil.rmtree(bundle)
                subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)],
                               check=True, capture_output=True, text=True)
                (bundle / "image-config.json").write_text(json.dumps(config, indent=1))
                with contextlib.suppress(OSError):
                    os.rename(bundle, target)
            finally:
                shutil.rmtree(bundle, ignore_errors=True)
    reference = reference or f"{default_repository()}:{tag}"
    index = _read_index(run_dir)
    index[reference] = digest
    tmp_index = _index_file(run_dir).with_suffix(".tmp")
    tmp_index.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    tmp_index.replace(_index_file(run_dir))
    named = {d.replace(":", "-") for d in index.values()}
    for old in store.iterdir():
        if old.is_dir() and old.name not in named and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    image = resolve(run_dir, reference)
    assert image is not None
    return image


def resolve(run_dir: Path, reference: str) -> Image | None:
    """The image `reference` names on this stack, if it was loaded (and is still unpacked)."""
    digest = _read_index(run_dir).get(reference)
    if digest is None:
        return None
    target = _images_dir(run_dir) / digest.replace(":", "-")
    try:
        config = json.loads((target / "image-config.json").read_text())
    except (OSError, ValueError):
        return None
    if not (target / "rootfs").is_dir():
        return None
    return Image(reference=reference, digest=digest, rootfs=target / "rootfs",
                 entrypoint=tuple(config.get("Entrypoint") or ()),
                 cmd=tuple(config.get("Cmd") or ()), env=tuple(config.get("Env") or ()),
                 user=str(config.get("User") or ""),
                 working_dir=str(config.get("WorkingDir") or ""),
                 labels=dict(config.get("Labels") or {}))
