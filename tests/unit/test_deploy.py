"""The deployment files a platform team applies as they are: valid, and wired as promised."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from export_poller.cli import main
from export_poller.config.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.30.0"  # the oldest release still supported upstream when this was written


def manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted((DEPLOY / "kubernetes").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((str(path.relative_to(DEPLOY)), doc))
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    return next(d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize(
    ("where", "doc"), manifests(), ids=[f"{w}:{d['kind']}" for w, d in manifests()]
)
def test_every_manifest_matches_the_kubernetes_schema(where: str, doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("keda.sh/"):
        assert "spec" in doc and doc["metadata"]["namespace"] == "export-poller"
        return  # a KEDA custom resource: no schema in kubernetes-validate, no cluster here
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_worker_is_probed_with_health_and_shuts_down_gracefully() -> None:
    spec = find("Deployment", "export-poller-worker")["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["livenessProbe"]["exec"]["command"] == ["export-poller", "health"]
    assert spec["terminationGracePeriodSeconds"] > Settings().lease_seconds
    assert {"secretRef": {"name": "export-poller"}} in container["envFrom"]
    assert not any("value" in e for e in container.get("env", []))  # no literal settings


def test_beat_is_one_replica_that_is_never_doubled_by_a_rollout() -> None:
    spec = find("Deployment", "export-poller-beat")["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}


def test_workers_scale_on_the_queue_and_the_stores_are_external() -> None:
    hpa = find("HorizontalPodAutoscaler", "export-poller-worker")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "export-poller-worker"
    assert hpa["metrics"][0]["external"]["metric"]["selector"]["matchLabels"] == {
        "queue": "export-poller"
    }
    for name in ("redis", "rabbitmq"):
        assert find("Service", name)["spec"]["type"] == "ExternalName"


def test_the_probe_command_exists() -> None:
    result = CliRunner().invoke(main, ["health", "--help"])
    assert result.exit_code == 0 and "--json" in result.output


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert {u.stem for u in units} == {
        "export-poller-worker",
        "export-poller-beat",
        "export-poller-flower",
        "export-poller-metrics",
    }
    with_venv = Path(sys.prefix)  # the units' /opt path, pointed at this install for the check
    copies = []
    for unit in units:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/opt/export-poller/venv", str(with_venv)))
        copies.append(str(copy))
    result = subprocess.run(
        [analyze, "verify", *copies], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0 and "System has not been booted with systemd" in result.stderr:
        pytest.skip("systemd-analyze cannot run here")
    assert result.returncode == 0, result.stderr
