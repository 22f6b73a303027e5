"""The image archive from scripts/build-image: a valid OCI image layout whose
digests and sizes add up, a config that runs weftd, a layer holding exactly
the two static binaries, and binaries that run and accept what the chart
hands them."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import VALUE_SETS, rendered

import oci_image
import weftchart

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class Archive:
    def __init__(self, path: Path):
        with tarfile.open(path) as tar:
            self.members = {m.name: m for m in tar.getmembers()}
            self.files = {
                m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()
            }
        self.index = json.loads(self.files["index.json"])
        (self.descriptor,) = self.index["manifests"]
        self.manifest = json.loads(self.blob(self.descriptor))
        self.config = json.loads(self.blob(self.manifest["config"]))
        (layer_desc,) = self.manifest["layers"]
        self.layer_gz = self.blob(layer_desc)
        self.layer = gzip.decompress(self.layer_gz)

    def blob(self, desc: dict) -> bytes:
        algo, hexd = desc["digest"].split(":")
        data = self.files[f"blobs/{algo}/{hexd}"]
        assert len(data) == desc["size"], f"{desc['digest']}: size {len(data)} != {desc['size']}"
        return data


@pytest.fixture(scope="module")
def archive(image_archive) -> Archive:
    return Archive(image_archive)


@pytest.fixture(scope="module")
def bins(archive, tmp_path_factory) -> Path:
    """The layer unpacked: usr/local/bin/{weftd,weft}."""
    root = tmp_path_factory.mktemp("rootfs")
    with tarfile.open(fileobj=io.BytesIO(archive.layer)) as tar:
        for m in tar.getmembers():
            if m.isfile():
                dest = root / m.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(m).read())
                dest.chmod(m.mode)
    return root / "usr" / "local" / "bin"


def isolated(cmd: list[str]) -> list[str]:
    """cmd in a new, empty network namespace: whatever it tries, the host's
    network is out of its reach."""
    if os.geteuid() == 0:
        return ["unshare", "--net", *cmd]
    return ["unshare", "--user", "--map-root-user", "--net", *cmd]


# --- layout -------------------------------------------------------------------


def test_layout_marker_and_index(archive):
    assert json.loads(archive.files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    assert archive.index["schemaVersion"] == 2
    assert archive.descriptor["mediaType"] == MT_MANIFEST


def test_every_blob_is_named_by_its_sha256(archive):
    blobs = {n: d for n, d in archive.files.items() if n.startswith("blobs/")}
    assert len(blobs) == 3  # manifest, config, layer
    for name, data in blobs.items():
        assert name == "blobs/sha256/" + hashlib.sha256(data).hexdigest()


def test_manifest_names_config_and_one_gzip_layer(archive):
    m = archive.manifest
    assert m["schemaVersion"] == 2 and m["mediaType"] == MT_MANIFEST
    assert m["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert [l["mediaType"] for l in m["layers"]] == ["application/vnd.oci.image.layer.v1.tar+gzip"]


def test_config_runs_weftd_as_non_root_by_default(archive):
    c = archive.config
    assert c["os"] == "linux"
    assert archive.descriptor["platform"] == {"architecture": c["architecture"], "os": "linux"}
    assert c["config"]["Entrypoint"] == ["/usr/local/bin/weftd"]
    assert c["config"]["User"] == "65532:65532"
    assert c["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(archive.layer).hexdigest()]}


def test_layer_holds_exactly_the_two_binaries_and_flanneld_s_path(archive):
    with tarfile.open(fileobj=io.BytesIO(archive.layer)) as tar:
        members = tar.getmembers()
    files = {m.name: m for m in members if m.isfile()}
    assert set(files) == {"usr/local/bin/weftd", "usr/local/bin/weft"}
    assert {m.name.rstrip("/") for m in members if m.isdir()} == {
        "usr", "usr/local", "usr/local/bin", "opt", "opt/bin",
    }
    links = {m.name: m.linkname for m in members if m.issym()}
    assert links == {
        "opt/bin/flanneld": "/usr/local/bin/weftd",
        "opt/bin/install-conf": "/usr/local/bin/weftd",
    }
    for m in members:
        if not m.issym():
            assert (m.uid, m.gid, m.mode) == (0, 0, 0o755), m.name


def test_weftd_run_as_flanneld_takes_flanneld_s_command_line(bins, tmp_path):
    flanneld = tmp_path / "flanneld"
    flanneld.symlink_to(bins / "weftd")
    out = subprocess.run([flanneld, "-h"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and "-kube-subnet-mgr" in out.stderr, out.stderr
    out = subprocess.run([flanneld, "--no-such-flag"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 2
    assert out.stderr.startswith("flag provided but not defined: -no-such-flag\n")


def test_weftd_run_as_install_conf_copies_the_conflist(bins, tmp_path):
    install = tmp_path / "install-conf"
    install.symlink_to(bins / "weftd")
    src = tmp_path / "cni-conf.json"
    src.write_text('{"name":"cbr0"}')
    dest = tmp_path / "net.d" / "10-flannel.conflist"
    out = subprocess.run([install, src, dest], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert dest.read_text() == '{"name":"cbr0"}'
    out = subprocess.run([install, src], capture_output=True, text=True, timeout=10)
    assert (out.returncode, out.stderr) == (1, "usage: install-conf <src> <dest>\n")


def test_image_name_is_the_charts_default_image(archive, default):
    version = oci_image.workspace_version()
    ann = archive.descriptor["annotations"]
    assert ann["org.opencontainers.image.ref.name"] == version
    assert ann["io.containerd.image.name"] == default.container("weftd")["image"]
    assert archive.config["config"]["Labels"]["org.opencontainers.image.version"] == version


# --- binaries -----------------------------------------------------------------


def test_binaries_are_statically_linked_for_the_image_architecture(archive, bins):
    for b in ("weftd", "weft"):
        arch, static = oci_image.elf_info(bins / b)
        assert static, f"{b} needs a dynamic loader"
        assert arch == archive.config["architecture"]


def test_weftd_version(bins):
    out = subprocess.run([bins / "weftd", "--version"], capture_output=True, text=True, timeout=10, check=True)
    assert out.stdout.strip() == f"weftd {oci_image.workspace_version()}"


def test_weft_answers_cni_version(bins, default):
    out = subprocess.run(
        [bins / "weft"], env={"CNI_COMMAND": "VERSION"}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=10, check=True,
    )
    v = json.loads(out.stdout)
    conflist = json.loads(default.config["data"]["cni-conf.json"])
    assert conflist["cniVersion"] in v["supportedVersions"]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_weftd_accepts_every_flag_the_daemonset_passes(bins, name):
    # clap stops at the first argument it does not know, before --help.
    r = rendered(name)
    specs = [c for c in r.containers() if c.get("command", [""])[0] == "/usr/local/bin/weftd"]
    assert specs
    for spec in specs:
        argv = [str(bins / "weftd"), *spec["command"][1:], *spec["args"], "--help"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, f"{spec['name']} ({name}): {out.stderr.strip()}"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_weftd_parses_the_rendered_net_conf(bins, name, tmp_path):
    conf = tmp_path / "net-conf.json"
    conf.write_text(rendered(name).config["data"]["net-conf.json"])
    out = subprocess.run(
        isolated([str(bins / "weftd"), f"--net-config-path={conf}", "--kubeconfig=/nonexistent", "--healthz-addr="]),
        env={"NODE_NAME": "check-deploy"}, capture_output=True, text=True, timeout=20,
    )
    rejected = ("net-conf.json: field", "net-conf.json is not", "net-conf.json: neither", "reading ")
    assert not any(r in out.stderr for r in rejected), out.stderr
    # Past the config, every set stops at the API it cannot reach (and at
    # nothing before it).
    assert "Kubernetes API" in out.stderr, out.stderr


def test_the_binaries_are_shipped_stripped(bins):
    for name in ("weftd", "weft"):
        sections = oci_image.section_names((bins / name).read_bytes())
        assert ".text" in sections, f"{name}: {sections}"
        # .debug_gdb_scripts is loaded (a few bytes naming pretty-printers).
        left = [s for s in sections if s == ".symtab" or (s.startswith(".debug") and s != ".debug_gdb_scripts")]
        assert not left, f"{name} ships {left}"


def test_install_cni_installs_the_rendered_conflist_once(bins, default, tmp_path):
    conf = tmp_path / "cni-conf.json"
    conf.write_text(default.config["data"]["cni-conf.json"])
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    argv = [str(bins / "weftd"), "install-cni", f"--bin-dir={bin_dir}", f"--conf-dir={conf_dir}", f"--cni-conf={conf}"]
    subprocess.run(argv, capture_output=True, timeout=10, check=True)
    installed = conf_dir / "10-weft.conflist"
    assert installed.read_text() == conf.read_text()
    assert (bin_dir / "weft").read_bytes() == (bins / "weft").read_bytes()  # the image's own copy
    assert os.stat(bin_dir / "weft").st_mode & 0o777 == 0o755
    inodes = (installed.stat().st_ino, (bin_dir / "weft").stat().st_ino)
    subprocess.run(argv, capture_output=True, timeout=10, check=True)
    assert (installed.stat().st_ino, (bin_dir / "weft").stat().st_ino) == inodes, "rewrote unchanged files"


def test_install_cni_auto_version_with_debians_plugins(bins, tmp_path):
    debian = Path("/usr/lib/cni")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for p in ("bridge", "host-local", "portmap"):
        assert (debian / p).exists(), f"{debian / p} missing: apt-get install containernetworking-plugins"
        (bin_dir / p).symlink_to(debian / p)
    argv = [str(bins / "weftd"), "install-cni", f"--bin-dir={bin_dir}", f"--conf-dir={tmp_path / 'net.d'}"]
    subprocess.run(argv, capture_output=True, timeout=20, check=True)
    conf = json.loads((tmp_path / "net.d" / "10-weft.conflist").read_text())
    assert conf["cniVersion"] == "1.0.0"  # Debian 12's plugins stop there
    assert [p["type"] for p in conf["plugins"]] == ["weft", "portmap"]
