"""`comfyfleet operator` with a pyinstrument profiler switched by signals (used by bench/operator_scale.py --profile).

SIGUSR1 starts sampling the event-loop thread; SIGUSR2 stops it and saves the session to the file named by
argv[1] (pyinstrument's .pyisession). Profiling only between the two signals keeps start-up out of the picture.

    python bench/profiled_operator.py OUT.pyisession
"""

from __future__ import annotations

import sys

from profiled_dispatcher import install

from comfyfleet.cli import main

if __name__ == "__main__":
    install(sys.argv[1])
    main(["operator"])
