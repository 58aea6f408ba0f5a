"""cluster/ and jobs/ files: the AWS launcher YAML against Ray's own schema, the KubeRay manifests
against the fields KubeRay requires, and every example job config against its stage's typed config."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from artray.config import load_config

REPO = Path(__file__).resolve().parents[1]
KUBERAY = REPO / "cluster" / "kuberay"
GPU = "nvidia.com/gpu"


# --- AWS cluster launcher -------------------------------------------------------------------------

def test_aws_launcher_yaml_validates_against_rays_schema():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cfg = yaml.safe_load((REPO / "cluster/aws.yaml").read_text())
    jsonschema.validate(cfg, schema)

    types = cfg["available_node_types"]
    assert cfg["provider"]["type"] == "aws" and cfg["head_node_type"] in types
    instance = {name: t["node_config"]["InstanceType"] for name, t in types.items()}
    assert instance[cfg["head_node_type"]].startswith("m")                     # CPU head
    assert any(i.startswith(("g5.", "g6.")) for i in instance.values())        # A10G / L4 class
    assert any(i.startswith(("p4d.", "p5.")) for i in instance.values())       # A100 / H100 class
    for name, t in types.items():
        if name != cfg["head_node_type"]:
            assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"], name
        if instance[name].startswith(("g5.", "g6.", "p4d.", "p5.")):
            assert t["resources"]["GPU"] > 0, name
        assert "IamInstanceProfile" in t["node_config"], f"{name}: S3 through an instance profile"
    setup = "\n".join(cfg["setup_commands"])
    assert '"torch==2.14.1"' in setup and '"torchvision==0.29.1"' in setup and "~/artray" in setup
    assert "ray[default,data,train,serve]==2.60.0" in setup
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start
    assert all("RAY_AUTH_MODE=token" in c for c in cfg["worker_start_ray_commands"] if "ray start" in c)


def test_aws_launcher_yaml_passes_rays_own_config_check():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(yaml.safe_load((REPO / "cluster/aws.yaml").read_text())))


# --- KubeRay --------------------------------------------------------------------------------------

CLUSTER_SPEC_KEYS = {"rayVersion", "authOptions", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec",
                     "workerGroupSpecs", "suspend", "headServiceAnnotations", "gcsFaultToleranceOptions", "managedBy"}
HEAD_KEYS = {"rayStartParams", "template", "serviceType", "headService", "enableIngress"}
WORKER_KEYS = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template", "numOfHosts",
               "scaleStrategy", "suspend", "idleTimeoutSeconds"}
RAYJOB_KEYS = {"entrypoint", "runtimeEnvYAML", "submissionMode", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished",
               "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "clusterSelector", "metadata", "jobId",
               "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "submitterPodTemplate", "suspend",
               "deletionStrategy", "managedBy", "submitterConfig"}
RAYSERVICE_KEYS = {"serveConfigV2", "rayClusterConfig", "upgradeStrategy", "serviceUnhealthySecondThreshold",
                   "deploymentUnhealthySecondThreshold", "excludeHeadPodFromServeSvc", "serveService"}
CREDENTIAL = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|ACCESS_KEY|API_KEY|SESSION_TOKEN)(_|$)")


def _manifests() -> dict[str, dict]:
    docs = {}
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def _check_container(container: dict, where: str, gpus: bool) -> None:
    assert container.get("image"), f"{where}: image"
    res = container.get("resources") or {}
    assert res.get("limits") and res.get("requests"), f"{where}: resources.requests and limits"
    if gpus:
        assert int(res["limits"][GPU]) > 0, f"{where}: GPU group without {GPU} limit"
        assert res["requests"].get(GPU, res["limits"][GPU]) == res["limits"][GPU], where
    else:
        assert GPU not in res["limits"], f"{where}: CPU group with a GPU"
    for env in container.get("env") or []:
        if CREDENTIAL.search(env["name"].upper()):
            assert "value" not in env and "valueFrom" in env, f"{where}: {env['name']} must come from a Secret"


def _check_pod(template: dict, where: str) -> dict:
    spec = template["spec"]
    assert spec.get("serviceAccountName") == "artray", f"{where}: S3 through the IRSA service account"
    return spec


def check_cluster_spec(spec: dict, where: str) -> None:
    assert set(spec) <= CLUSTER_SPEC_KEYS, f"{where}: unknown fields {set(spec) - CLUSTER_SPEC_KEYS}"
    assert spec["rayVersion"] == "2.60.0"
    assert spec["authOptions"]["mode"] == "token", f"{where}: Ray token auth"
    head = spec["headGroupSpec"]
    assert set(head) <= HEAD_KEYS and isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), "rayStartParams values are strings"
    containers = _check_pod(head["template"], f"{where}.head")["containers"]
    assert containers[0]["name"] == "ray-head"
    _check_container(containers[0], f"{where}.head", gpus=False)
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: head must not be exposed"

    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups), "groupName unique"
    for g in groups:
        name = f"{where}.{g['groupName']}"
        assert set(g) <= WORKER_KEYS, f"{name}: unknown fields {set(g) - WORKER_KEYS}"
        assert isinstance(g["rayStartParams"], dict)
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{name}: replicas out of range"
        pod = _check_pod(g["template"], name)
        gpus = g["groupName"].startswith(("gpu", "train"))
        _check_container(pod["containers"][0], name, gpus)
        if gpus:
            assert any(t.get("key") == GPU for t in pod.get("tolerations", [])), f"{name}: GPU taint toleration"


def test_kuberay_manifests_have_the_fields_kuberay_requires():
    docs = _manifests()
    assert {"RayCluster", "RayJob", "RayService", "ServiceAccount"} <= set(docs)
    for kind in ("RayCluster", "RayJob", "RayService"):
        assert docs[kind]["apiVersion"] == "ray.io/v1" and docs[kind]["metadata"]["name"]
    sa = docs["ServiceAccount"]
    assert sa["metadata"]["name"] == "artray" and "eks.amazonaws.com/role-arn" in sa["metadata"]["annotations"]

    check_cluster_spec(docs["RayCluster"]["spec"], "RayCluster")
    groups = {g["groupName"] for g in docs["RayCluster"]["spec"]["workerGroupSpecs"]}
    assert any(g.startswith("gpu") for g in groups) and any(g.startswith("train") for g in groups)

    job = docs["RayJob"]["spec"]
    assert set(job) <= RAYJOB_KEYS, set(job) - RAYJOB_KEYS
    check_cluster_spec(job["rayClusterSpec"], "RayJob")
    assert job["entrypoint"].startswith("python jobs/augment.py --config ")
    assert yaml.safe_load(job["runtimeEnvYAML"])["working_dir"]
    assert job["shutdownAfterJobFinishes"] is True

    svc = docs["RayService"]["spec"]
    assert set(svc) <= RAYSERVICE_KEYS, set(svc) - RAYSERVICE_KEYS
    check_cluster_spec(svc["rayClusterConfig"], "RayService")
    served = yaml.safe_load(svc["serveConfigV2"])
    local = yaml.safe_load((REPO / "serve_configs/retrieval.yaml").read_text())
    assert len(served["applications"]) == len(local["applications"])
    for s, l in zip(served["applications"], local["applications"]):
        assert (s["name"], s["route_prefix"], s["import_path"]) == (l["name"], l["route_prefix"], l["import_path"])
        assert s["args"] == l["args"]
        assert [d["name"] for d in s["deployments"]] == [d["name"] for d in l["deployments"]]


def test_rayjob_entrypoint_config_loads():
    job = _manifests()["RayJob"]["spec"]
    argv = job["entrypoint"].split()
    cfg = argv[argv.index("--config") + 1]
    assert (REPO / cfg).exists()
    stage = importlib.import_module("artray.stages.augment")
    load_config(stage.AugmentConfig, str(REPO / cfg))


def test_no_credentials_in_cluster_and_job_files():
    patterns = [re.compile(p) for p in (r"AKIA[0-9A-Z]{16}", r"(?i)aws_secret_access_key\s*[:=]",
                                        r"BEGIN [A-Z ]*PRIVATE KEY", r"(?i)RAY_AUTH_TOKEN\s*[:=]\s*[^\s$\"'{(]\S{7,}")]
    files = [*REPO.glob("cluster/**/*"), *REPO.glob("jobs/**/*.yaml"), *REPO.glob("serve_configs/*.yaml")]
    for f in files:
        if f.is_file():
            text = f.read_text()
            for p in patterns:
                assert not p.search(text), f"{f}: looks like a credential ({p.pattern})"


# --- local scripts --------------------------------------------------------------------------------

def test_local_scripts_bind_loopback_with_token_auth():
    for name in ("start-local.sh", "stop-local.sh"):
        subprocess.run(["bash", "-n", str(REPO / "cluster" / name)], check=True)
        assert os.access(REPO / "cluster" / name, os.X_OK)
    text = (REPO / "cluster/start-local.sh").read_text()
    assert "BIND=${ARTRAY_BIND:-127.0.0.1}" in text and '--dashboard-host="$BIND"' in text
    assert "RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}" in text


# --- example job configs --------------------------------------------------------------------------

def _command_for(stem: str) -> tuple[str, ...] | None:
    if stem.startswith("import-"):
        return None
    if stem.startswith("train-"):
        return ("train",)
    return {"ingest": ("corpus", "ingest"), "index": ("index", "build"),
            "evaluate-captions": ("evaluate", "captions"), "evaluate-retrieval": ("evaluate", "retrieval"),
            "evaluate-runs": ("evaluate", "runs")}.get(stem, (stem,))


CONFIGS = sorted((REPO / "jobs/configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_example_job_config_loads_into_its_typed_config(path):
    from artray import cli

    command = _command_for(path.stem)
    if command is None:
        from artray.corpora.importer import ImportConfig as config_cls
    else:
        refs = {row[0]: row[1] for row in cli.RAY_JOBS}
        assert command in refs, f"{path.name} has no `artray {' '.join(command)}` job in cli.RAY_JOBS"
        module, name = refs[command].split(":")
        config_cls = getattr(importlib.import_module(module), name)
    cfg = load_config(config_cls, str(path))
    assert cfg.model_dump()


def test_every_stage_has_an_entrypoint_and_an_example_config():
    from artray.submit import STAGES

    stems = {p.stem for p in CONFIGS}
    for stage, (script, lead) in STAGES.items():
        assert (REPO / script).exists(), script
        if stage == "evaluate-retrieval":
            continue  # its config comes with `artray evaluate retrieval`
        assert any(s == stage or s.startswith(stage + "-") for s in stems), f"no jobs/configs/ example for {stage}"
