"""cluster/ and jobs/ files: the AWS launcher YAML against Ray's own schema, the KubeRay manifests
against the fields KubeRay requires, and every example job config against its stage's typed config."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
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
        node = t["node_config"]
        assert "IamInstanceProfile" in node, f"{name}: S3 through an instance profile"
        # A current Ubuntu 22.04 GPU image (Ray's default AMI is Ubuntu 18.04 / CUDA 11.2), in private subnets.
        assert "ubuntu-22.04" in node["ImageId"] and node["ImageId"].startswith(("ami-", "resolve:ssm:")), name
        assert node["SubnetIds"] and all(s.startswith("subnet-") for s in node["SubnetIds"]), name
        assert node["SecurityGroupIds"] and all(g.startswith("sg-") for g in node["SecurityGroupIds"]), name
    assert cfg["provider"]["use_internal_ips"] is True, "nodes get no public IPs"
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

CREDENTIAL = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|ACCESS_KEY|API_KEY|SESSION_TOKEN)(_|$)")
WORKLOADS = {"raycluster": "RayCluster", "augment": "RayJob", "retrieval": "RayService"}
CRDS = Path(__file__).resolve().parent / "data" / "kuberay-crds"  # KubeRay v1.7.0's CRDs (README there)


def _render(workload: str) -> list[dict]:
    """The documents `kubectl apply -k cluster/kuberay/<workload>` applies (kubectl's built-in kustomize)."""
    if not shutil.which("kubectl"):
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    out = subprocess.run(["kubectl", "kustomize", str(KUBERAY / workload)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _strict(schema: dict) -> dict:
    """A CRD's openAPIV3Schema as kubectl's strict field validation reads it: unknown fields are errors
    wherever the schema lists properties (and does not preserve unknown fields)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


def _validate_against_crd(doc: dict) -> None:
    import jsonschema

    schema = json.loads(gzip.decompress((CRDS / f"{doc['kind']}.v1.json.gz").read_bytes()))
    errors = sorted(jsonschema.Draft7Validator(_strict(schema)).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, f"{doc['kind']} {doc['metadata']['name']}: " + "; ".join(
        f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5])


def _containers(doc: dict) -> list[dict]:
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    found.extend(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    return found


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


def check_cluster_spec(spec: dict, where: str) -> None:
    assert spec["rayVersion"] == "2.60.0"
    assert spec["authOptions"]["mode"] == "token", f"{where}: Ray token auth"
    head = spec["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), "rayStartParams values are strings"
    pod = head["template"]["spec"]
    assert pod.get("serviceAccountName") == "artray", f"{where}.head: S3 through the IRSA service account"
    assert pod["containers"][0]["name"] == "ray-head"
    _check_container(pod["containers"][0], f"{where}.head", gpus=False)
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: head must not be exposed"
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups), "groupName unique"
    for g in groups:
        name = f"{where}.{g['groupName']}"
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{name}: replicas out of range"
        pod = g["template"]["spec"]
        assert pod.get("serviceAccountName") == "artray", f"{name}: S3 through the IRSA service account"
        gpus = g["groupName"].startswith(("gpu", "train"))
        _check_container(pod["containers"][0], name, gpus)
        if gpus:
            assert any(t.get("key") == GPU for t in pod.get("tolerations", [])), f"{name}: GPU taint toleration"


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_kuberay_workload_renders_and_validates_strictly_against_kuberays_crds(workload):
    docs = {d["kind"]: d for d in _render(workload)}
    kind = WORKLOADS[workload]
    assert kind in docs and docs["ServiceAccount"]["metadata"]["name"] == "artray"
    assert "eks.amazonaws.com/role-arn" in docs["ServiceAccount"]["metadata"]["annotations"]
    doc = docs[kind]
    assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
    _validate_against_crd(doc)
    # The image is a parameter: set once in common/kustomization.yaml, used by every container.
    image = yaml.safe_load((KUBERAY / "common/kustomization.yaml").read_text())["images"][0]
    assert {c["image"] for c in _containers(doc)} == {f"{image['newName']}:{image['newTag']}"}
    spec = doc["spec"]
    cluster = {"RayCluster": lambda: spec, "RayJob": lambda: spec["rayClusterSpec"],
               "RayService": lambda: spec["rayClusterConfig"]}[kind]()
    check_cluster_spec(cluster, kind)
    if kind == "RayCluster":
        groups = {g["groupName"] for g in spec["workerGroupSpecs"]}
        assert any(g.startswith("gpu") for g in groups) and any(g.startswith("train") for g in groups)


def test_kuberay_rayjob_takes_its_config_from_a_configmap_not_the_image():
    from artray.stages.augment import AugmentConfig

    docs = {d["kind"]: d for d in _render("augment")}
    job = docs["RayJob"]["spec"]
    assert job["entrypoint"].startswith("python jobs/augment.py --config ")
    assert yaml.safe_load(job["runtimeEnvYAML"])["working_dir"] and job["shutdownAfterJobFinishes"] is True
    path = job["entrypoint"].split("--config ")[1].split()[0]
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]  # the entrypoint runs on the head
    mount = next(m for m in head["containers"][0]["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    config_map = docs["ConfigMap"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    text = config_map["data"][path.rsplit("/", 1)[1]]
    assert text == (KUBERAY / "augment/config.yaml").read_text()
    cfg = load_config(AugmentConfig, None, yaml.safe_load(text))
    assert cfg.output.startswith("s3://")


def test_kuberay_rayservice_serves_the_app_of_serve_configs_with_the_token_on_every_pod():
    docs = {d["kind"]: d for d in _render("retrieval")}
    svc = docs["RayService"]["spec"]
    served = yaml.safe_load(svc["serveConfigV2"])
    local = yaml.safe_load((REPO / "serve_configs/retrieval.yaml").read_text())
    assert len(served["applications"]) == len(local["applications"])
    for s, l in zip(served["applications"], local["applications"]):
        assert (s["name"], s["route_prefix"], s["import_path"]) == (l["name"], l["route_prefix"], l["import_path"])
        assert s["args"] == l["args"]
        assert [d["name"] for d in s["deployments"]] == [d["name"] for d in l["deployments"]]
    token_env = served["applications"][0]["args"]["auth"]["token_env"]
    cluster = svc["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        names = {e["name"] for e in pod["spec"]["containers"][0].get("env", [])}
        assert token_env in names, f"{pod['spec']['containers'][0]['name']}: no {token_env}"


def test_dockerignore_keeps_the_build_context_to_what_the_image_copies():
    import fnmatch

    rules = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:  # Docker's rule: the last matching pattern wins; "!" re-includes
        verdict = False
        for rule in rules:
            negate, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path.split("/")[0], pattern):
                verdict = not negate
        return verdict

    copied = re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", (REPO / "cluster/Dockerfile").read_text(), re.M)
    for sources in copied:
        for src in sources.split():
            assert not ignored(src), f".dockerignore drops {src}, which cluster/Dockerfile copies"
    for path in (".venv", ".git", "demo_out", "tests", "bench", ".torch_extensions", "artray/__pycache__"):
        assert ignored(path), f".dockerignore sends {path} to the Docker build"


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
    assert "RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}" in text and '--temp-dir="$DIR"' in text


def _start_local(home: Path, port: int, cluster_dir: Path) -> dict[str, str]:
    """cluster/start-local.sh on `port` with its own folder; returns the client settings it wrote."""
    env = {**os.environ, "HOME": str(home), "ARTRAY_RAY_PORT": str(port), "ARTRAY_DASHBOARD_PORT": str(port + 1),
           "ARTRAY_CLUSTER_DIR": str(cluster_dir), "RAY": str(Path(sys.executable).parent / "ray")}
    for var in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        env.pop(var, None)
    out = subprocess.run(["bash", str(REPO / "cluster/start-local.sh"), "--num-cpus=1"], env=env, text=True,
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"source {cluster_dir}/client.env" in out.stdout
    client = {**env}
    for line in (cluster_dir / "client.env").read_text().splitlines():
        if line.startswith("export "):
            key, value = line.removeprefix("export ").split("#")[0].strip().split("=", 1)
            client[key] = value
    return client


def _stop_local(cluster_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ARTRAY_CLUSTER_DIR": str(cluster_dir), "ARTRAY_STOP_GRACE_S": "3"}
    return subprocess.run(["bash", str(REPO / "cluster/stop-local.sh")], env=env, text=True, capture_output=True,
                          timeout=60)


def _group_alive(cluster_dir: Path) -> bool:
    pgid = int((cluster_dir / "cluster.pgid").read_text())
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def free_port_pair() -> int:
    """A port P on 127.0.0.1 with P+1 free too (GCS and dashboard of one test cluster)."""
    import socket

    from artray.runtime import free_port

    for _ in range(50):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free ports")


ATTACH = ("from artray.runtime import init_ray; init_ray(); import ray; "
          "print('cpus', int(ray.cluster_resources()['CPU']))")


def test_start_local_clients_attach_and_stop_local_stops_only_its_cluster(tmp_path):
    """Two clusters from start-local.sh: a client using the printed client.env attaches to the token-auth
    loopback head (no hang, no auth error); stop-local.sh stops the one it names and leaves the other up."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    token = home / ".ray" / "auth_token"
    token.write_text("0123456789abcdef0123456789abcdef\n")
    token.chmod(0o644)
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="arx", dir="/tmp"))  # Ray's socket paths leave 46 characters
    a_dir, b_dir = short / "a", short / "b"
    a_port, b_port = free_port_pair(), free_port_pair()
    a = _start_local(home, a_port, a_dir)
    try:
        assert oct(token.stat().st_mode & 0o777) == "0o600", "an existing token readable by others is made private"
        b = _start_local(home, b_port, b_dir)
        try:
            assert a["RAY_ADDRESS"] == f"127.0.0.1:{a_port}" and a["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
            attach = subprocess.run([sys.executable, "-c", ATTACH], env=b, text=True, capture_output=True, timeout=90)
            assert attach.returncode == 0 and "cpus 1" in attach.stdout, attach.stderr[-2000:]
            # Only RAY_ADDRESS (as `--address 127.0.0.1:PORT` gives it): artray's init_ray adds what client.env
            # would (loopback node address, token mode), so it attaches instead of hanging for minutes.
            bare = {k: v for k, v in b.items()
                    if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "RAY_ADDRESS")}
            attach = subprocess.run([sys.executable, "-m", "artray.cli", "embed", "--address", b["RAY_ADDRESS"],
                                     "--input", str(short / "no-corpus"), "--output", str(short / "emb"),
                                     "--family", "longclip", "--checkpoint", "z"], env=bare, text=True,
                                    capture_output=True, timeout=120)
            # attached (the CLI joins the cluster before the stage reads its input), then the stage's own error
            assert attach.returncode == 2 and "has no _manifest.json" in attach.stderr, attach.stderr[-2000:]
            job_api = {**bare, "RAY_ADDRESS": b["RAY_API_SERVER_ADDRESS"]}  # the README's old trap
            refused = subprocess.run([sys.executable, "-m", "artray.cli", "embed", "--input", "x", "--output", "y",
                                      "--family", "longclip", "--checkpoint", "z"], env=job_api, text=True,
                                     capture_output=True, timeout=120)
            assert refused.returncode == 2 and "is the dashboard / job API" in refused.stderr, refused.stderr[-2000:]

            stopped = _stop_local(a_dir)
            assert stopped.returncode == 0 and "stopped the Ray cluster" in stopped.stdout, stopped.stderr
            assert not (a_dir / "cluster.pgid").exists()
            assert _group_alive(b_dir), "stop-local.sh stopped another cluster"
            again = subprocess.run([sys.executable, "-c", ATTACH], env=b, text=True, capture_output=True, timeout=90)
            assert again.returncode == 0 and "cpus 1" in again.stdout, again.stderr[-2000:]
        finally:
            _stop_local(b_dir)
        assert not any(p.exists() for p in (b_dir / "cluster.pgid",))
    finally:
        if (a_dir / "cluster.pgid").exists():
            _stop_local(a_dir)
        shutil.rmtree(short, ignore_errors=True)


# --- example job configs --------------------------------------------------------------------------

def _command_for(stem: str) -> tuple[str, ...] | None:
    if stem.startswith("import-"):
        return None
    if stem.startswith("train-"):
        return ("train",)
    if stem.startswith("caption-"):
        return ("caption",)
    return {"ingest": ("corpus", "ingest"), "index": ("index", "build"),
            "evaluate-captions": ("evaluate", "captions"), "evaluate-retrieval": ("evaluate", "retrieval"),
            "evaluate-runs": ("evaluate", "runs")}.get(stem, (stem,))


CONFIGS = sorted((REPO / "jobs/configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_example_job_config_loads_into_its_typed_config(path):
    from artray.import_refs import load_ref
    from artray.jobs import commands

    command = _command_for(path.stem)
    if command is None:
        from artray.corpora.importer import ImportConfig as config_cls
    else:
        refs = {job.command: job.config for job in commands().values()}
        assert command in refs, f"{path.name} has no `artray {' '.join(command)}` job in artray.jobs.JOBS"
        config_cls = load_ref(refs[command])
    cfg = load_config(config_cls, str(path))
    assert cfg.model_dump()


def test_every_stage_has_an_entrypoint_and_an_example_config():
    from artray.jobs import submittable

    stems = {p.stem for p in CONFIGS}
    for stage, job in submittable().items():
        script = job.entrypoint[0]
        assert (REPO / script).exists(), script
        if stage == "evaluate-retrieval":
            continue  # its config comes with `artray evaluate retrieval`
        if stage == "recipe":  # a recipe is itself the config: jobs/recipes/<name>.yaml
            assert list((REPO / "jobs" / "recipes").glob("*.yaml")), "no recipes under jobs/recipes/"
            continue
        assert any(s == stage or s.startswith(stage + "-") for s in stems), f"no jobs/configs/ example for {stage}"
