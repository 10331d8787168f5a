"""`comfyfleet dispatcher` with a pyinstrument profiler switched by signals (used by bench/dispatch_profile.py).

SIGUSR1 starts sampling the event-loop thread; SIGUSR2 stops it and saves the session to the file named by
argv[1] (pyinstrument's .pyisession). The rest of argv goes to `comfyfleet dispatcher`. Profiling only
between the two signals keeps start-up imports and hand-over out of the picture.

    python bench/profiled_dispatcher.py OUT.pyisession --port 0
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from pyinstrument import Profiler

from comfyfleet.cli import main


def install(out: str) -> None:
    profiler = Profiler(interval=0.0005, async_mode="disabled")

    def start(signum: int, frame: Any) -> None:
        if not profiler.is_running:
            profiler.start()

    def stop(signum: int, frame: Any) -> None:
        if profiler.is_running:
            session = profiler.stop()
            session.save(out + ".partial")
            os.replace(out + ".partial", out)  # the reader waits for the file: it must appear complete

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


if __name__ == "__main__":
    install(sys.argv[1])
    main(["dispatcher", *sys.argv[2:]])
