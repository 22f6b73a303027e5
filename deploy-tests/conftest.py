"""Fixtures for the deploy checks: the chart rendered by Helm's engine with
each values set, and the image archive."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import oci_image  # noqa: E402
import weftchart  # noqa: E402

CI_DIR = weftchart.CHART / "ci"

# Every values set the checks render: the defaults and each file in
# charts/weft/ci (Helm's chart-testing convention).
VALUE_SETS = {"default": None} | {
    p.stem: yaml.safe_load(p.read_text()) for p in sorted(CI_DIR.glob("*.yaml"))
}


# The values sets that deploy weftd itself (not the cleanup DaemonSet).
AGENT_SETS = sorted(n for n, v in VALUE_SETS.items() if not (v or {}).get("cleanup", {}).get("enabled"))


class Rendered:
    """The objects of one render, with lookups by kind."""

    def __init__(self, values: dict | None):
        self.values = values
        self.docs = weftchart.render(values)
        self.objects = [d.obj for d in self.docs]

    def one(self, kind: str) -> dict:
        found = [o for o in self.objects if o["kind"] == kind]
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    @property
    def config(self) -> dict:
        """weft's own ConfigMap (net-conf.json, cni-conf.json): the Grafana
        dashboard's is another."""
        found = [o for o in self.objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "weft-config"]
        assert len(found) == 1, f"expected one ConfigMap weft-config, found {len(found)}"
        return found[0]

    def kinds(self) -> list[str]:
        return [o["kind"] for o in self.objects]

    @property
    def pod(self) -> dict:
        return self.one("DaemonSet")["spec"]["template"]["spec"]

    def containers(self) -> list[dict]:
        return self.pod.get("initContainers", []) + self.pod["containers"]

    def container(self, name: str) -> dict:
        pod = self.pod
        found = [c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == name]
        assert len(found) == 1, f"expected one container {name}"
        return found[0]


_cache: dict[str, Rendered] = {}


def rendered(name: str) -> Rendered:
    if name not in _cache:
        _cache[name] = Rendered(VALUE_SETS[name])
    return _cache[name]


@pytest.fixture(params=sorted(VALUE_SETS))
def every_render(request) -> Rendered:
    """The chart rendered with each values set in turn."""
    return rendered(request.param)


@pytest.fixture(params=AGENT_SETS)
def agent_render(request) -> Rendered:
    """The chart rendered with each values set that deploys weftd."""
    return rendered(request.param)


@pytest.fixture
def default() -> Rendered:
    return rendered("default")


@pytest.fixture
def all_options() -> Rendered:
    return rendered("all-options-values")


@pytest.fixture
def udp() -> Rendered:
    return rendered("udp-values")


@pytest.fixture
def host_gw() -> Rendered:
    return rendered("host-gw-values")


@pytest.fixture
def cleanup() -> Rendered:
    return rendered("cleanup-values")


@pytest.fixture
def monitoring() -> Rendered:
    return rendered("monitoring-values")


@pytest.fixture(scope="session")
def image_archive(tmp_path_factory) -> Path:
    """$WEFT_IMAGE_ARCHIVE (scripts/check-deploy builds it with
    scripts/build-image), or one built here from the static binaries."""
    given = os.environ.get("WEFT_IMAGE_ARCHIVE")
    if given:
        return Path(given)
    release = weftchart.ROOT / "target" / "x86_64-unknown-linux-gnu" / "release"
    out = tmp_path_factory.mktemp("image") / "weft.tar"
    oci_image.build(release / "weftd", release / "weft", out, "localhost/weft", oci_image.workspace_version())
    return out


GROUPS = {
    "test_chart.py": "chart: lint, render, kubernetes-validate, assertions",
    "test_manifests.py": "manifests/*.yaml match a fresh render",
    "test_image.py": "image archive: layout, manifest, config, binaries run",
}


def pytest_terminal_summary(terminalreporter):
    counts: dict[str, list[int]] = {}
    for outcome in ("passed", "failed", "error"):
        for rep in terminalreporter.stats.get(outcome, []):
            f = Path(rep.nodeid.split("::")[0]).name
            c = counts.setdefault(f, [0, 0])
            c[0 if outcome == "passed" else 1] += 1
    terminalreporter.write_sep("-", "deploy checks")
    for f, label in GROUPS.items():
        p, n = counts.get(f, [0, 0])
        if p + n == 0:
            terminalreporter.write_line(f"--   {label}: not run")
            continue
        mark = "ok  " if n == 0 else "FAIL"
        terminalreporter.write_line(f"{mark} {label}: {p} passed, {n} failed")
