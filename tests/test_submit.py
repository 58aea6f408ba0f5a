"""`artray submit` / `artray jobs` against a real local Ray head with token auth, through the Jobs HTTP API.

The head is a `ray start --head --block` subprocess with its own temp dir, ports and token file;
teardown stops exactly that process (SIGTERM makes `--block` shut its node down), never `ray stop`,
so the session's other Ray (conftest's `ray_local`) is left alone.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import sockets
from artray.runtime import free_port

from artray import submit as sub
from artray.cli import main
from artray.errors import UserError
from artray.jobs import submittable

REPO = Path(__file__).resolve().parents[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:  # 401: up, and asking for the token
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"Ray dashboard at {url} did not come up:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def head_process():
    """cluster/start-local.sh (as users run it: token auth, 127.0.0.1) with its own ports, token file and temp
    dir, in the foreground (`--block`); yields (address, token file, the `ray start` process)."""
    tmp = Path(tempfile.mkdtemp(prefix="/tmp/arsub"))  # short: Ray's unix socket paths have a length limit
    token_file = tmp / "token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    dash = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_API_SERVER_ADDRESS", "ARTRAY_BIND")}
    env.update(RAY_AUTH_TOKEN_PATH=str(token_file), ARTRAY_RAY_PORT=str(free_port()), ARTRAY_DASHBOARD_PORT=str(dash),
               # jobs run `python …`: the venv's, like the head's own
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    log = tmp / "ray-start.log"
    cmd = ["bash", str(REPO / "cluster" / "start-local.sh"), "--block", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", "--include-dashboard=true", "--num-cpus=2",
           "--object-store-memory=100000000", f"--temp-dir={tmp / 'ray'}"]
    with open(log, "wb") as fh:  # the script execs `ray start`: this process is the head's
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_http(address + "/api/version", proc, log)
        yield address, token_file, proc
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its own node on SIGTERM
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this fixture started, nothing else
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head(head_process):
    """The token-authenticated head's job API; (address, token file)."""
    return head_process[:2]


@pytest.fixture
def as_client(ray_head, monkeypatch):
    """This process holds the head's token the way a user's shell would (a token file)."""
    address, token_file = ray_head
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    return address, token_file.read_text()


@pytest.fixture(scope="module")
def sample_dir():
    from artray.scaffold.sample_corpora import make_samples

    d = Path(tempfile.mkdtemp(prefix="/tmp/arsmp"))
    make_samples(d, n=6, seed=0)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _submit_args(address: str, *rest: str) -> list[str]:
    return ["submit", "import", "--address", address, "--working-dir", str(REPO),
            "--config", str(REPO / "jobs/configs/import-artcap.yaml"), *rest]


def test_submit_import_job_succeeds_and_writes_outputs(as_client, failing_job, sample_dir, tmp_path, capsys):
    address, token = as_client
    dest = tmp_path / "corpus"
    job_id = f"artray-test-ok-{secrets.token_hex(3)}"
    rc = main(_submit_args(address, "--set", f"src={sample_dir / 'artcap'}", "--set", f"dest={dest}",
                           "--job-id", job_id, "--wait"))
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert "[import] artcap: 6 artworks" in out  # the job's own log line, streamed back
    assert f"{job_id}: SUCCEEDED" in err
    manifest = json.loads((dest / "_manifest.json").read_text())
    assert manifest["counts"]["artworks"] == 6
    assert token not in out + err

    assert main(["jobs", "list", "--address", address]) == 0
    listing = capsys.readouterr().out
    assert job_id in listing and "SUCCEEDED" in listing and "jobs/import_corpus.py" in listing
    assert main(["jobs", "logs", job_id, "--address", address]) == 0
    assert "[import] artcap" in capsys.readouterr().out
    assert main(["jobs", "status", job_id, "--address", address]) == 0


def test_relative_paths_are_resolved_where_the_user_submits_from(as_client, sample_dir, tmp_path, monkeypatch,
                                                                 capsys):
    """`--set dest=out/rel` lands in the submitting directory (not inside Ray's unpacked working dir, deleted with
    the cluster), and a relative input that exists here is found."""
    address, _ = as_client
    (tmp_path / "in").mkdir()
    shutil.copytree(sample_dir / "artcap", tmp_path / "in" / "artcap")
    monkeypatch.chdir(tmp_path)
    job_id = f"artray-test-rel-{secrets.token_hex(3)}"
    rc = main(_submit_args(address, "--set", "src=in/artcap", "--set", "dest=out/rel", "--job-id", job_id, "--wait"))
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert f"dest={tmp_path / 'out' / 'rel'}" in err
    assert json.loads((tmp_path / "out" / "rel" / "_manifest.json").read_text())["counts"]["artworks"] == 6


def test_relative_paths_for_a_remote_cluster_are_refused_before_anything_is_sent(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["submit", "import", "--address", "http://ray-head.invalid:8265", "--working-dir", str(REPO),
               "--config", str(REPO / "jobs/configs/import-artcap.yaml"), "--set", "dest=out/rel"])
    err = capsys.readouterr().err
    assert rc == 2 and "dest=out/rel: relative paths name files on this machine" in err and "s3://" in err


@pytest.fixture(scope="module")
def failing_job(ray_head):
    """A job whose stage fails (missing input), submitted up front so it runs beside the others."""
    address, token_file = ray_head
    missing = Path(tempfile.mkdtemp(prefix="/tmp/arfail")) / "no-such-corpus"
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token_file.read_text()}"})
    job_id = sub.submit("import", str(REPO / "jobs/configs/import-artcap.yaml"), working_dir=REPO,
                        overrides=[f"src={missing}", f"dest={missing.parent / 'out'}"], client=client)
    yield job_id, missing
    shutil.rmtree(missing.parent, ignore_errors=True)


def test_failing_job_returns_nonzero_with_its_error(as_client, failing_job, capsys):
    address, token = as_client
    job_id, missing = failing_job
    rc = main(["jobs", "logs", job_id, "--follow", "--address", address])
    out, err = capsys.readouterr()
    assert rc != 0
    assert "artray: error" in out + err and str(missing) in out + err  # the stage's message came through
    assert f"{job_id}: FAILED" in err
    assert not (missing.parent / "out" / "_manifest.json").exists()
    assert token not in out + err
    assert main(["jobs", "status", job_id, "--address", address]) == 1


def _client_without_token(monkeypatch, how: str) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    if how == "no token":
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
        monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    else:
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token-" + secrets.token_hex(8))


@pytest.mark.parametrize("how", ["no token", "wrong token"])
def test_job_api_refuses_without_the_token(ray_head, monkeypatch, how):
    address, _ = ray_head
    _client_without_token(monkeypatch, how)
    with pytest.raises(UserError) as exc:
        sub.make_client(address).list_jobs()
    assert "not-the-token" not in str(exc.value)


def _submission_ids(address: str, token_file: Path) -> set[str]:
    from ray.job_submission import JobSubmissionClient

    admin = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token_file.read_text()}"})
    return {j.submission_id for j in admin.list_jobs()}


@pytest.mark.parametrize("how", ["no token", "wrong token"])
def test_artray_submit_is_refused_without_the_token(ray_head, sample_dir, tmp_path, monkeypatch, capsys, how):
    address, token_file = ray_head
    _client_without_token(monkeypatch, how)
    job_id = f"artray-test-refused-{secrets.token_hex(3)}"
    rc = main(_submit_args(address, "--set", f"src={sample_dir / 'artcap'}", "--set", f"dest={tmp_path / 'out'}",
                           "--job-id", job_id, "--wait"))
    out, err = capsys.readouterr()
    assert rc == 2, err
    if how == "wrong token":
        assert f"artray: error: the Ray job API at {address} refused the auth token" in err
    else:
        assert f"artray: error: the Ray job API at {address} needs an auth token" in err
    assert "not-the-token" not in out + err
    assert job_id not in _submission_ids(address, token_file) and not (tmp_path / "out").exists()


def test_ray_job_submit_is_refused_without_the_token_and_runs_with_it(ray_head):
    address, token_file = ray_head
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_AUTH") and k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    job_id = f"ray-cli-{secrets.token_hex(3)}"
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--submission-id", job_id,
           "--", "python", "-c", "print('hello from the job')"]
    for refused_env in ({"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"}):
        refused = subprocess.run(cmd, env={**env, **refused_env}, capture_output=True, text=True, timeout=180)
        assert refused.returncode != 0 and "hello from the job" not in refused.stdout
    assert job_id not in _submission_ids(address, token_file)
    ok = subprocess.run(cmd, env={**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)},
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "hello from the job" in ok.stdout, ok.stdout + ok.stderr
    assert "succeeded" in ok.stdout.lower()


def test_start_local_head_listens_on_loopback_only(head_process):
    address, _, proc = head_process
    found = sockets.listening(proc.pid)
    names, ports = {name for name, _, _ in found}, {port for _, _, port in found}
    assert {"gcs_server", "raylet"} <= names and int(address.rsplit(":", 1)[1]) in ports, found  # + the dashboard
    assert sockets.wide(found) == [], f"the head listens beyond 127.0.0.1: {sockets.wide(found)}"


# --- no cluster needed --------------------------------------------------------------------------

def test_token_sources_in_ray_order(tmp_path, monkeypatch):
    f = tmp_path / "tok"
    f.write_text("from-file\n")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(f))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert sub.read_auth_token() == "from-env"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    assert sub.read_auth_token() == "from-file"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert sub.read_auth_token() is None


def test_entrypoints_and_runtime_env(tmp_path):
    for stage, job in submittable().items():
        assert (REPO / job.entrypoint[0]).exists(), f"{stage}: {job.entrypoint[0]} missing"
    ep = sub.build_entrypoint("evaluate-captions", str(REPO / "jobs/configs/evaluate-captions.yaml"), REPO,
                              overrides=["splits=[test]"])
    assert ep == "python jobs/evaluate.py captions --config jobs/configs/evaluate-captions.yaml --set 'splits=[test]'"
    outside = tmp_path / "x.yaml"
    outside.write_text("{}")
    with pytest.raises(UserError, match="outside the working dir"):
        sub.build_entrypoint("ingest", str(outside), REPO)

    env = sub.build_runtime_env(REPO, "jobs/runtime_env.yaml")
    assert env["working_dir"] == str(REPO)
    assert {".venv", ".git", "demo_out", "tests"} <= set(env["excludes"])
    assert "pip" not in env  # the cluster image carries artray's deps
    pins = sub.build_runtime_env(REPO, "jobs/runtime_env.yaml", install_deps=True)["pip"]["packages"]
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins
    assert not any(p.startswith("ray") for p in pins)

    bad = tmp_path / "env.yaml"
    bad.write_text("env_vars: {AWS_SECRET_ACCESS_KEY: x}\n")
    with pytest.raises(UserError, match="credentials"):
        sub.build_runtime_env(REPO, str(bad))
