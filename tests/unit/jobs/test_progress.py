from comfyfleet.jobs.progress import ProgressTracker


def test_fraction_counts_cached_done_and_running_steps():
    t = ProgressTracker(total_nodes=4)
    assert t.cached(["1"]).fraction == 0.25
    t.executing("2")
    p = t.step(5, 10, "2")
    assert (p.value, p.max, p.node) == (5, 10, "2") and p.fraction == 0.375
    p = t.executing("3")
    assert p.fraction == 0.5 and p.value == 0
    assert t.executing(None).fraction == 0.75


def test_never_reports_complete_before_success():
    t = ProgressTracker(total_nodes=1)
    t.executing("1")
    assert t.step(10, 10, "1").fraction == 0.99
