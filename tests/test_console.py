"""The console a person reads: one progress line per stage (redrawn on a terminal, plain lines elsewhere),
and Ray's own log lines in a file instead of on the screen."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

from artray.console import StageProgress, progress_line, report


def test_progress_line_says_how_far_how_fast_how_long_and_what_failed():
    assert progress_line("embed", 100, 20, 400, 10.0) == "[embed] 120/400 rows 30%, 12.0 rows/s, ETA 0:23, 20 failed"
    assert progress_line("ingest", 400, 0, 400, 8.0) == "[ingest] 400/400 rows 100%, 50.0 rows/s"
    assert progress_line("caption", 3, 0, None, 0.0) == "[caption] 3 rows, 0.0 rows/s"
    assert progress_line("train", 0, 0, 2, 30.0, unit="epochs") == "[train] 0/2 epochs 0%"
    assert progress_line("train", 1, 0, 2, 30.0, unit="epochs") == "[train] 1/2 epochs 50%, 30 s/epoch, ETA 0:30"


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def _stage(progress: StageProgress, batches: int) -> None:
    import ray

    @ray.remote(num_cpus=0.1)
    def commit(counter, i):
        ray.get(report(counter, ok=10, failed=1 if i == 0 else 0))

    ray.get([commit.remote(progress.counter, i) for i in range(batches)])


def test_progress_in_a_log_is_plain_lines_and_ends_with_the_final_count(ray_local):
    stream = _Stream(tty=False)
    with StageProgress("embed", total=41, stream=stream, interval_s=0.0, poll_s=0.05) as progress:
        _stage(progress, 4)
    text = stream.getvalue()
    assert "\x1b" not in text and "\r" not in text, "no terminal codes outside a terminal"
    lines = text.splitlines()
    assert lines[-1].startswith("[embed] 41/41 rows 100%") and lines[-1].endswith("1 failed")


def test_progress_on_a_terminal_redraws_one_line(ray_local):
    stream = _Stream(tty=True)
    with StageProgress("augment", total=20, stream=stream, poll_s=0.05) as progress:
        _stage(progress, 2)
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.startswith("\r[augment]")
    assert text.rstrip("\n").rsplit("\r", 1)[-1].startswith("[augment] 21/20 rows")


def test_the_final_line_has_the_stages_exact_counts(ray_local):
    stream = _Stream(tty=False)
    with StageProgress("ingest", total=5, stream=stream, interval_s=3600) as progress:
        progress.finish(4, 1)
    assert stream.getvalue() == "[ingest] 5/5 rows 100%, " + stream.getvalue().split(", ", 1)[1]
    assert stream.getvalue().rstrip().endswith("1 failed") and stream.getvalue().count("\n") == 1


def test_a_driver_that_sees_each_batch_counts_it_with_no_counter_actor():
    stream = _Stream(tty=False)
    with StageProgress("ingest", total=30, stream=stream, interval_s=0.0, poll_s=0.02, workers_report=False) as progress:
        assert progress.counter is None, "no actor (no worker process) for the progress of such a stage"
        progress.add(10)
        progress.add(9, 1)
        deadline = time.time() + 5
        while "20/30" not in stream.getvalue() and time.time() < deadline:
            time.sleep(0.02)
        assert stream.getvalue().splitlines()[-1].startswith("[ingest] 20/30 rows 67%")
        progress.add(10)
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("[ingest] 30/30 rows 100%") and last.endswith("1 failed")


def test_ray_log_lines_go_to_a_file_and_errors_stay_on_the_console(tmp_path):
    code = ("import logging, ray.data; from artray.console import route_ray_logs; path = route_ray_logs(); "
            "log = logging.getLogger('ray.data'); log.info('info-line-for-the-file'); "
            "log.warning('warning-line-for-the-file'); log.error('error-line-for-people'); print(path)")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    env.pop("ARTRAY_VERBOSE", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    path = done.stdout.strip().splitlines()[-1]
    assert path.startswith(str(tmp_path))
    assert "-for-the-file" not in done.stderr and "error-line-for-people" in done.stderr
    logged = open(path, encoding="utf-8").read()
    assert all(f"{x}-line-for-" in logged for x in ("info", "warning", "error"))

    verbose = subprocess.run([sys.executable, "-c", code], env={**env, "ARTRAY_VERBOSE": "1"}, capture_output=True,
                             text=True, timeout=120)
    assert "info-line-for-the-file" in verbose.stderr and verbose.stdout.strip().endswith("None")


def test_artray_info_lines_print_bare_like_stage_lines_and_warnings_keep_their_origin():
    """artray's own INFO lines (the train driver's "[train] …") print as bare lines among the stage lines;
    warnings still say when, how bad and from where; -v keeps the full format for everything."""
    code = ("import logging; from artray.console import setup_cli_logging; setup_cli_logging({v}); "
            "logging.getLogger('artray.train').info('[train] clip on 1 workers'); "
            "logging.getLogger('artray.train').warning('a-warning')")
    env = {k: v for k, v in os.environ.items() if k != "ARTRAY_VERBOSE"}
    quiet = subprocess.run([sys.executable, "-c", code.format(v=False)], env=env, capture_output=True, text=True,
                           timeout=120)
    lines = quiet.stderr.splitlines()
    assert "[train] clip on 1 workers" in lines, quiet.stderr
    assert any(line.endswith("WARNING artray.train: a-warning") and line[:4].isdigit() for line in lines), lines
    loud = subprocess.run([sys.executable, "-c", code.format(v=True)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert any(line.endswith("INFO artray.train: [train] clip on 1 workers") for line in loud.stderr.splitlines())


def test_deepspeed_notices_stay_off_the_console_and_its_errors_stay_on(tmp_path):
    """DeepSpeed sets its logger to INFO with a stdout handler of its own when imported (after the CLI set up
    logging): its "Setting accelerator to CPU" notice must still not reach the console; its errors must."""
    code = ("import logging; from artray.console import setup_cli_logging; setup_cli_logging(False); "
            "from deepspeed.accelerator import get_accelerator; get_accelerator(); "
            "logging.getLogger('DeepSpeed').warning('warning-line-for-nobody'); "
            "logging.getLogger('DeepSpeed').error('error-line-for-people')")
    env = {k: v for k, v in os.environ.items() if k not in ("DS_ACCELERATOR", "ARTRAY_VERBOSE")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = done.stdout + done.stderr
    assert "Setting accelerator" not in shown and "warning-line-for-nobody" not in shown, shown[-2000:]
    assert "error-line-for-people" in shown
    verbose = subprocess.run([sys.executable, "-c", code.replace("(False)", "(True)")], env=env,
                             capture_output=True, text=True, timeout=180)
    assert "warning-line-for-nobody" in verbose.stdout + verbose.stderr


_RESTART_NOTICE = """
import sys, ray
from artray.console import _routed
from artray.runtime import init_ray
init_ray(sys.argv[1])

@ray.remote(num_cpus=0, max_restarts=1)
class Restartable:  # what every Ray Data actor pool is: a restartable actor given an ObjectRef
    def __init__(self, arg):
        self.arg = arg

    def ping(self):
        return "pong"

actor = Restartable.remote(ray.put(list(range(10))))
assert ray.get(actor.ping.remote()) == "pong"
from artray import console
print("LOG", console._routed)
"""


def test_rays_actor_restart_notice_goes_to_the_driver_log_not_the_console(ray_local):
    """Ray's core logs "… has constructor arguments in the object store and max_restarts > 0" at ERROR, once
    per driver, for every Ray Data actor pool; artray sends it to the driver log file."""
    address = ray_local._private.worker.global_worker.node.address
    env = {k: v for k, v in os.environ.items() if k != "ARTRAY_VERBOSE"}
    done = subprocess.run([sys.executable, "-c", _RESTART_NOTICE, address], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "constructor arguments in the object store" not in done.stderr + done.stdout, done.stderr[-3000:]
    log = done.stdout.strip().splitlines()[-1].split(" ", 1)[1]
    assert "constructor arguments in the object store" in open(log, encoding="utf-8").read()
