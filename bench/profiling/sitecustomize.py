"""Profiles every thread of a vws service process when VWS_PROFILE_DIR is set, and writes the
merged cProfile statistics to VWS_PROFILE_DIR/<service>-<pid>.prof at exit (a graceful stop).
SIGUSR2 forgets what was profiled so far (the end of a warm-up).
Put on PYTHONPATH by bench/breakdown.py only; a plain run never imports it."""
import os

if os.environ.get("VWS_PROFILE_DIR"):
    import atexit
    import cProfile
    import pstats
    import signal
    import sys
    import threading

    _profiles: list = []

    def _start(*_):
        # The first event of a new thread swaps this hook for a profiler of the thread's own.
        p = cProfile.Profile()
        _profiles.append(p)
        p.enable()

    def _dump():
        for p in _profiles:
            p.disable()
        service = next((a for a in sys.argv[1:] if not a.startswith("-")), "process")
        path = os.path.join(os.environ["VWS_PROFILE_DIR"], f"{service}-{os.getpid()}.prof")
        live = [p for p in _profiles if p.getstats()]
        if live:
            pstats.Stats(*live).dump_stats(path)

    def _forget(*_):
        for p in _profiles:
            p.clear()

    threading.setprofile(_start)
    signal.signal(signal.SIGUSR2, _forget)
    _start()
    atexit.register(_dump)
