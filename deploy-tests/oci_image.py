"""Build weft's container image as an OCI image layout archive, without a
container engine: what the Dockerfile's final stage holds (FROM scratch plus
the two static binaries), assembled directly.

The archive is a tar of an OCI image layout (image-spec, image-layout.md):

    oci-layout                 {"imageLayoutVersion": "1.0.0"}
    index.json                 an image index naming the one manifest
    blobs/sha256/<hex>         the manifest, the config and the layer

The single layer (gzip) holds usr/local/bin/weftd and usr/local/bin/weft,
stripped of symbols and debug sections, owned by root, mode 0755, and opt/bin/flanneld and opt/bin/install-conf,
symbolic links to weftd: kube-flannel.yml runs those two from flannel's
image, and weftd takes their command lines under their names. The config runs weftd as uid/gid 65532 by default
(the DaemonSet sets uid 0 itself; see the chart). Every timestamp comes from
SOURCE_DATE_EPOCH, so the same binaries give the same digests.

Standard library only: scripts/build-image runs it with the system python3.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tarfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

BIN_DIR = "usr/local/bin"
# What kube-flannel.yml's containers run from flannel's image: weftd takes
# both commands under these names.
FLANNEL_PROGRAMS = ("opt/bin/flanneld", "opt/bin/install-conf")
IMAGE_USER = "65532:65532"

# ELF e_machine -> OCI architecture.
ELF_ARCH = {0x3E: "amd64", 0xB7: "arm64"}


class ImageError(Exception):
    pass


def elf_info(path: Path) -> tuple[str, bool]:
    """(OCI architecture, statically linked) of an ELF executable: static
    means no PT_INTERP program header (no dynamic loader to find in a
    scratch image)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ImageError(f"{path}: not a 64-bit little-endian ELF file")
    machine = int.from_bytes(data[18:20], "little")
    arch = ELF_ARCH.get(machine)
    if arch is None:
        raise ImageError(f"{path}: unsupported ELF machine {machine:#x}")
    phoff = int.from_bytes(data[32:40], "little")
    phentsize = int.from_bytes(data[54:56], "little")
    phnum = int.from_bytes(data[56:58], "little")
    pt_interp = 3
    interp = any(
        int.from_bytes(data[phoff + i * phentsize : phoff + i * phentsize + 4], "little")
        == pt_interp
        for i in range(phnum)
    )
    return arch, not interp


def section_names(data: bytes) -> list[str]:
    """Names of an ELF64 file's sections (from its section header table)."""
    shoff = int.from_bytes(data[40:48], "little")
    shentsize = int.from_bytes(data[58:60], "little")
    shnum = int.from_bytes(data[60:62], "little")
    shstrndx = int.from_bytes(data[62:64], "little")
    if shoff == 0 or shnum == 0:
        return []
    def header(i: int) -> tuple[int, int, int]:
        h = data[shoff + i * shentsize : shoff + (i + 1) * shentsize]
        return int.from_bytes(h[0:4], "little"), int.from_bytes(h[24:32], "little"), int.from_bytes(h[32:40], "little")
    _, str_off, str_size = header(shstrndx)
    strtab = data[str_off : str_off + str_size]
    names = []
    for i in range(shnum):
        name_off = header(i)[0]
        names.append(strtab[name_off : strtab.index(b"\0", name_off)].decode())
    return names


def stripped(path: Path) -> bytes:
    """The executable without its symbol table and debug sections (weftd's
    line tables alone are most of its size): `strip --strip-all` of a copy."""
    tool = shutil.which("strip")
    if tool is None:
        raise ImageError("`strip` (binutils) is not installed: run scripts/setup-host.sh")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / path.name
        subprocess.run([tool, "--strip-all", "-o", str(out), str(path)], check=True, capture_output=True)
        return out.read_bytes()


def workspace_version() -> str:
    with open(ROOT / "Cargo.toml", "rb") as f:
        return tomllib.load(f)["workspace"]["package"]["version"]


def source_date_epoch() -> int:
    v = os.environ.get("SOURCE_DATE_EPOCH")
    return int(v) if v else 0


def _tarinfo(name: str, mtime: int, mode: int, size: int = 0, is_dir: bool = False):
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    ti.mode = mode
    ti.size = size
    ti.mtime = mtime
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def layer_tar(binaries: dict[str, bytes], mtime: int) -> bytes:
    """The uncompressed layer: parent directories, then the binaries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        parts = BIN_DIR.split("/")
        for i in range(1, len(parts) + 1):
            tar.addfile(_tarinfo("/".join(parts[:i]) + "/", mtime, 0o755, is_dir=True))
        for name in sorted(binaries):
            data = binaries[name]
            tar.addfile(_tarinfo(f"{BIN_DIR}/{name}", mtime, 0o755, len(data)), io.BytesIO(data))
        parts = FLANNEL_PROGRAMS[0].split("/")[:-1]
        for i in range(1, len(parts) + 1):
            tar.addfile(_tarinfo("/".join(parts[:i]) + "/", mtime, 0o755, is_dir=True))
        for program in FLANNEL_PROGRAMS:
            link = _tarinfo(program, mtime, 0o777)
            link.type = tarfile.SYMTYPE
            link.linkname = f"/{BIN_DIR}/weftd"
            tar.addfile(link)
    return buf.getvalue()


def _gzip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return buf.getvalue()


def _json(obj) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build(weftd: Path, weft: Path, out: Path, name: str, version: str) -> dict:
    """Writes the archive to `out`; returns a summary (digests, sizes)."""
    arches = set()
    for path in (weftd, weft):
        if not path.is_file():
            raise ImageError(f"{path}: no such file (scripts/build-static weftd weft-cni builds both)")
        arch, static = elf_info(path)
        if not static:
            raise ImageError(f"{path}: dynamically linked; a FROM scratch image has no libc to load")
        arches.add(arch)
    if len(arches) != 1:
        raise ImageError(f"weftd and weft are built for different architectures: {sorted(arches)}")
    arch = arches.pop()
    layer = layer_tar({"weftd": stripped(weftd), "weft": stripped(weft)}, source_date_epoch())
    labels = {
        "org.opencontainers.image.title": "weft",
        "org.opencontainers.image.description": "weftd (node agent) and weft (CNI plugin), statically linked",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.licenses": "Apache-2.0",
    }
    return write_archive(
        out,
        layer,
        {
            "User": IMAGE_USER,
            "Entrypoint": [f"/{BIN_DIR}/weftd"],
            "Env": [f"PATH=/{BIN_DIR}"],
            "Labels": labels,
        },
        arch,
        name,
        version,
        "scripts/build-image: weftd, weft",
    )


def write_archive(out: Path, layer: bytes, run_config: dict, arch: str, name: str, version: str,
                  created_by: str) -> dict:
    """Writes a one-layer image (`layer` an uncompressed tar, `run_config`
    the config's `config` object) as an OCI layout archive named
    `name:version`; returns a summary (digests, sizes)."""
    epoch = source_date_epoch()
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    layer_gz = _gzip(layer)
    config = _json(
        {
            "created": created,
            "architecture": arch,
            "os": "linux",
            "config": run_config,
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
            "history": [{"created": created, "created_by": created_by}],
        }
    )
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": MT_LAYER, "digest": _digest(layer_gz), "size": len(layer_gz)}],
            "annotations": {
                "org.opencontainers.image.created": created,
                "org.opencontainers.image.version": version,
            },
        }
    )
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": [
                {
                    "mediaType": MT_MANIFEST,
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "platform": {"architecture": arch, "os": "linux"},
                    "annotations": {
                        # The tag (skopeo's oci-archive:FILE:TAG), and the
                        # full name containerd's `ctr images import` uses.
                        "org.opencontainers.image.ref.name": version,
                        "io.containerd.image.name": f"{name}:{version}",
                    },
                }
            ],
        }
    )
    blobs = {_digest(b).split(":", 1)[1]: b for b in (layer_gz, config, manifest)}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry, data in [("oci-layout", _json({"imageLayoutVersion": "1.0.0"})), ("index.json", index)]:
            tar.addfile(_tarinfo(entry, epoch, 0o644, len(data)), io.BytesIO(data))
        for d in ("blobs/", "blobs/sha256/"):
            tar.addfile(_tarinfo(d, epoch, 0o755, is_dir=True))
        for hexd in sorted(blobs):
            data = blobs[hexd]
            tar.addfile(_tarinfo(f"blobs/sha256/{hexd}", epoch, 0o644, len(data)), io.BytesIO(data))
    os.replace(tmp, out)
    return {
        "archive": str(out),
        "image": f"{name}:{version}",
        "architecture": arch,
        "manifest": _digest(manifest),
        "config": _digest(config),
        "layer": _digest(layer_gz),
        "layer_size": len(layer_gz),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="scripts/build-image", description=__doc__.split("\n\n")[0])
    p.add_argument("--weftd", type=Path, required=True)
    p.add_argument("--weft", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", default="localhost/weft", help="image name without tag")
    p.add_argument("--tag", default=None, help="default: the workspace version")
    a = p.parse_args(argv[1:])
    try:
        s = build(a.weftd, a.weft, a.out, a.name, a.tag or workspace_version())
    except ImageError as e:
        print(f"build-image: {e}", file=sys.stderr)
        return 1
    print(f"{s['archive']}: {s['image']} ({s['architecture']}), manifest {s['manifest']}, "
          f"layer {s['layer_size'] / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
