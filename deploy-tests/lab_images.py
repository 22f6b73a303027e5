"""Build the two images the real-node lab runs besides weft's own, without a
registry or a container engine (none is reachable here):

    pause.tar     localhost/pause:<tag>    /pause, built by scripts/build-kube.sh
                                           from the Kubernetes source's pause.c
    busybox.tar   localhost/busybox:<tag>  /bin/busybox from Debian's
                                           busybox-static, with its applets
                                           (sh, ping, nc, wget, ...) as links

Each is an OCI layout archive that `ctr -n k8s.io images import` takes as a
local image; pods name it with imagePullPolicy Never or IfNotPresent.

Standard library only: scripts/build-lab-images runs it with python3.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import oci_image
from oci_image import ImageError, _tarinfo, elf_info, write_archive

PAUSE_TAG = "3.4.1"


def _dirs(tar: tarfile.TarFile, path: str, mtime: int) -> None:
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        tar.addfile(_tarinfo("/".join(parts[:i]) + "/", mtime, 0o755, is_dir=True))


def _static(path: Path) -> str:
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    arch, static = elf_info(path)
    if not static:
        raise ImageError(f"{path}: dynamically linked; a FROM scratch image has no libc to load")
    return arch


def pause_image(pause: Path, out: Path) -> dict:
    arch = _static(pause)
    mtime = oci_image.source_date_epoch()
    buf = io.BytesIO()
    data = pause.read_bytes()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tarinfo("pause", mtime, 0o755, len(data)), io.BytesIO(data))
    return write_archive(out, buf.getvalue(), {"Entrypoint": ["/pause"], "User": "65535:65535"},
                         arch, "localhost/pause", PAUSE_TAG, "lab_images.py: pause.c")


def busybox_applets(busybox: Path) -> list[str]:
    out = subprocess.run([str(busybox), "--list"], check=True, capture_output=True, text=True).stdout
    return sorted({a for a in out.split() if a and "/" not in a and a != "busybox"})


def busybox_image(busybox: Path, out: Path) -> dict:
    arch = _static(busybox)
    mtime = oci_image.source_date_epoch()
    version = subprocess.run([str(busybox)], capture_output=True, text=True).stdout.split()[1]
    tag = version.lstrip("v")
    data = busybox.read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _dirs(tar, "bin", mtime)
        tar.addfile(_tarinfo("bin/busybox", mtime, 0o755, len(data)), io.BytesIO(data))
        for applet in busybox_applets(busybox):
            link = _tarinfo(f"bin/{applet}", mtime, 0o777)
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        for d in ("tmp", "etc", "root"):
            tar.addfile(_tarinfo(f"{d}/", mtime, 0o1777 if d == "tmp" else 0o755, is_dir=True))
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
                           ("etc/group", "root:x:0:\n")):
            tar.addfile(_tarinfo(name, mtime, 0o644, len(text)), io.BytesIO(text.encode()))
    return write_archive(out, buf.getvalue(), {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
                         arch, "localhost/busybox", tag, "lab_images.py: Debian busybox-static")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="scripts/build-lab-images", description=__doc__.split("\n\n")[0])
    p.add_argument("--pause", type=Path, required=True, help="the static pause binary")
    p.add_argument("--busybox", type=Path, default=Path("/bin/busybox"))
    p.add_argument("--out-dir", type=Path, required=True)
    a = p.parse_args(argv[1:])
    try:
        for s in (pause_image(a.pause, a.out_dir / "pause.tar"),
                  busybox_image(a.busybox, a.out_dir / "busybox.tar")):
            print(f"{s['archive']}: {s['image']} ({s['architecture']}), layer {s['layer_size'] / 1e6:.1f} MB")
    except (ImageError, subprocess.CalledProcessError) as e:
        print(f"build-lab-images: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
