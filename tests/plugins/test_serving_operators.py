"""The batch operators at their boundary: the pod `score_kubernetes` builds (official schema, strict; locked
down like the step pods; `python -m ml batch` with the promoted version pinned), and which model a run scores
(the version and sha256 of the `<name>.champion` event that triggered it, else the champion alias)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowFailException

from ct_airflow.kubernetes import CONFIG_GUARD
from ct_airflow.serving import KubernetesBatchOperator, promoted_model
from tests.conftest import write_config
from tests.plugins.test_kubernetes_manifests import kubeconfig, serialise, validate  # noqa: F401

MODEL = "employee-attrition"


def _event(version: str, sha: str) -> SimpleNamespace:
    return SimpleNamespace(extra={"version": version, "sha256": sha, "kind": "promote"})


def test_the_triggering_promotion_names_the_model() -> None:
    champion = Asset(name=f"{MODEL}.champion", uri=f"models:/{MODEL}@champion")
    other = Asset(name="other.champion", uri="models:/other@champion")
    context = {"triggering_asset_events": {other: [_event("9", "b" * 64)],
                                           champion: [_event("3", "a" * 64), _event("4", "c" * 64)]}}
    assert promoted_model(context, MODEL) == (f"models:/{MODEL}/4", "c" * 64)  # the newest event
    assert promoted_model({}, MODEL) == (None, None)  # scheduled / manual: the champion alias
    assert promoted_model({"triggering_asset_events": {champion: []}}, MODEL) == (None, None)


def test_batch_pod_validates_and_scores_the_promoted_version(kubeconfig, tmp_path) -> None:  # noqa: F811
    config = write_config(tmp_path / "c", training={"kubernetes": {"image": "registry.example.com/ct-ml:abc"}},
                          batch={"input_path": "/data/in/rows.parquet", "output_path": "/data/out/",
                                 "backend": "kubernetes", "volume_claim": "ct-batch-data"})
    op = KubernetesBatchOperator(task_id="score_kubernetes", config_path=str(config), input_path="",
                                 output_path="", run_key="asset_triggered__2026-03-01")
    champion = Asset(name=f"{MODEL}.champion", uri=f"models:/{MODEL}@champion")
    pod_op = op.pod_operator({"triggering_asset_events": {champion: [_event("7", "d" * 64)]}})
    pod = serialise(pod_op.build_pod_request_obj())
    validate(pod)
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["/bin/sh", "-c", CONFIG_GUARD, "ct"]
    assert container["args"] == ["batch", "--config", f"/app/configs/{config.name}", "--run-key",
                                 "asset_triggered__2026-03-01", "--output", "/data/out/", "--model-uri",
                                 f"models:/{MODEL}/7", "--expected-sha256", "d" * 64]
    assert container["image"] == "registry.example.com/ct-ml:abc"
    assert pod["spec"]["automountServiceAccountToken"] is False  # scoring needs no Kubernetes API
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "batch-scorer"
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "ct-batch-data"}} in pod["spec"]["volumes"]


def test_batch_pod_needs_an_output_the_pod_can_write(kubeconfig, tmp_path) -> None:  # noqa: F811
    config = write_config(tmp_path / "c", batch={"input_path": "rows.parquet", "backend": "kubernetes"})
    op = KubernetesBatchOperator(task_id="score_kubernetes", config_path=str(config), run_key="r")
    with pytest.raises(AirflowFailException, match="batch.backend kubernetes needs batch.output_path"):
        op.execute({})


def test_cli_batch_argv_round_trips_through_the_parser() -> None:
    from ml.cli import batch_argv, build_parser

    args = build_parser().parse_args(batch_argv("/app/configs/m.yaml", "r1", "/in.csv", "/out", "models:/m/2",
                                                "e" * 64))
    assert (args.command, args.config, args.run_key, args.input, args.output, args.model_uri,
            args.expected_sha256) == ("batch", "/app/configs/m.yaml", "r1", "/in.csv", "/out", "models:/m/2", "e" * 64)
