"""The image step of URL ingest alone: CPU per image of ``artray.images.fit_long_side`` with each
resampling filter, side by side with img2dataset's own path (OpenCV: full decode, INTER_AREA,
JPEG q95) when ``cv2`` can be imported.

Same deterministic JPEGs as ``bench/ingest.py`` (640-1600 px per side, shrunk to a 576 px long
side), one thread, filters interleaved in every round; CPU time (``time.process_time``), which
other people's load disturbs far less than wall time. Prints ms per image and the ratio to
artray's default filter.

    .venv/bin/python bench/resize.py            # 60 images x 3 rounds (~20 s)
    .venv/bin/python bench/resize.py --quick    # 20 images x 2 rounds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, median, table  # noqa: E402
from ingest import SEED, TARGET, make_jpeg  # noqa: E402

from artray.images import RESAMPLE_FILTERS, fit_long_side  # noqa: E402

DEFAULT = "area"


def _opencv_step():
    """img2dataset's image step (its defaults for keep_ratio_largest), or None without cv2."""
    try:
        import cv2
        import numpy as np
    except ImportError:
        return None
    cv2.setNumThreads(1)

    def step(data: bytes) -> bytes:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        h, w = img.shape[:2]
        scale = TARGET / max(h, w)
        img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()

    return step


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="20 images, 2 rounds")
    a = p.parse_args()
    if a.quick:
        a.images, a.rounds = 20, 2
    print(machine_line())
    images = [make_jpeg(i, SEED)[0] for i in range(a.images)]
    steps = {f"artray {name}": (lambda d, n=name: fit_long_side(d, TARGET, resample=n)[0]) for name in RESAMPLE_FILTERS}
    opencv = _opencv_step()
    if opencv is not None:
        steps["img2dataset (cv2 INTER_AREA)"] = opencv
    ms: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(a.rounds):
        for name, step in steps.items():
            start = time.process_time()
            for data in images:
                step(data)
            ms[name].append((time.process_time() - start) / len(images) * 1e3)
    base = median(ms[f"artray {DEFAULT}"])
    rows = [[name, median(v), median(v) / base] for name, v in ms.items()]
    print(table(["image step", "CPU ms/image", f"ratio to artray {DEFAULT}"], rows, digits=2))
    print(f"{a.images} JPEGs (640-1600 px) -> {TARGET} px long side, JPEG q95, 1 thread, median of {a.rounds} rounds"
          + ("" if opencv else "; cv2 not importable here, img2dataset's path skipped"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
