"""experiments/learning_curve.py: chains of warm restarts and the power-law extrapolation."""

from __future__ import annotations

import json

import pytest


def _write_run(folder, name, run_dir, init_from, steps, validation_meh, test_uha):
    config = {"run_dir": run_dir, "train": {"init_from": init_from}, "published": {"Q": 10.0}}
    (folder / f"mol_{name}_config.json").write_text(json.dumps(config))
    lines = [
        json.dumps({"step": s, "validation_total_mae_mEh": v, "learning_rate": 1e-3})
        for s, v in zip(steps, validation_meh, strict=True)
    ]
    (folder / f"mol_{name}_log.jsonl").write_text("\n".join(lines) + "\n")
    (folder / f"mol_{name}_test.json").write_text(json.dumps({"mae_uha": test_uha}))


def test_restart_chain_and_power_law_extrapolation(tmp_path, experiment):
    """Runs chain by init_from whatever their names; each continues from the previous
    run's best validation step; the fit recovers an exact power law and inverts it."""
    lc = experiment("learning_curve")
    a, alpha = 4000.0, 0.4
    law = lambda s: a * s**-alpha  # noqa: E731
    # "b" is the root, "a" continues it from its best step (200, not its last, 300).
    _write_run(tmp_path, "b", "runs/first", None, [100, 200, 300], [1.0, 0.5, 0.6], law(300))
    _write_run(tmp_path, "a", "second", "first", [100, 400], [0.4, 0.3], law(600))
    _write_run(tmp_path, "c", "third", "runs/second", [1000], [0.2], law(1600))
    _write_run(tmp_path, "lone", "other", None, [10], [9.0], 9000.0)
    runs = lc.load_runs(tmp_path, "mol")
    chains = lc.chains(runs)
    assert chains == [["b", "a", "c"], ["lone"]]
    curves = lc.curve(runs, chains[0])
    assert [c["start_step"] for c in curves] == [0, 200, 600]
    assert [c["end_step"] for c in curves] == [300, 600, 1600]
    summary = lc.summarise(curves, {"Q": 10.0}, fit_last=3)
    fit = summary["power_law"]
    assert fit["alpha"] == pytest.approx(alpha, rel=1e-9)
    assert fit["a_uha"] == pytest.approx(a, rel=1e-9)
    assert law(fit["steps_to_reach"]["Q"]) == pytest.approx(10.0, rel=1e-9)


def test_a_run_continuing_an_unknown_run_is_named(tmp_path, experiment):
    lc = experiment("learning_curve")
    _write_run(tmp_path, "x", "x", "missing", [1], [1.0], 1.0)
    with pytest.raises(ValueError, match="'x' continues 'missing'"):
        lc.chains(lc.load_runs(tmp_path, "mol"))
