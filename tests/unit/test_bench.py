"""The benchmark's arithmetic and its baselines: the source blog's four approaches and the
per-event twin step must all give the full-history outputs (the blog's own assertion)."""

from worker.bench.kernel import baselines, flops_per_event
from worker.model.reference import make_reference_model


def test_flops_per_event_of_the_reference_model():
    assert flops_per_event() == 563_600  # 2 x (4 x 100 x 104 + 4 x 200 x 300 + 200)


def test_every_baseline_equals_the_full_history():
    model = make_reference_model(features=4, units=(8, 4), seed=2)
    timings = baselines(model, events=6)  # raises when an approach differs by more than 1e-5
    assert [t.events for t in timings] == [6] * 6
    assert all(t.seconds > 0 for t in timings)
    assert "classic" in timings[0].name and "one compiled step" in timings[-1].name
    assert "one NumPy step" in timings[-2].name
