"""manifests/weft.yaml (default values) and manifests/weft-cleanup.yaml
(cleanup.enabled) are the chart rendered: each committed file must equal a
fresh render."""

from __future__ import annotations

import difflib

import pytest
import yaml

import weftchart


@pytest.mark.parametrize("name", sorted(weftchart.MANIFESTS))
def test_committed_manifest_matches_a_fresh_render(name):
    path = weftchart.MANIFEST_DIR / name
    fresh = weftchart.manifest_text(name)
    committed = path.read_text() if path.exists() else ""
    if committed != fresh:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                fresh.splitlines(keepends=True),
                f"manifests/{name} (committed)",
                "charts/weft rendered now",
            )
        )
        raise AssertionError(
            f"manifests/{name} differs from the chart: run scripts/render-manifests and commit it\n" + diff
        )


@pytest.mark.parametrize("name", sorted(weftchart.MANIFESTS))
def test_manifest_applies_in_order_namespace_first(name):
    docs = [d for d in yaml.safe_load_all((weftchart.MANIFEST_DIR / name).read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds[0] == "Namespace"
    assert kinds.index("DaemonSet") > kinds.index("ConfigMap")
    assert kinds.index("DaemonSet") > kinds.index("ServiceAccount")
