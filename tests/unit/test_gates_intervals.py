"""Gates that know their error bars: intervals on the typed metrics, --gate-mode, --max-class-drop, the default floor."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from rescompile.config import Gates
from rescompile.errors import UsageError
from rescompile.report.junit import render_junit
from rescompile.report.markdown import gate_rows
from rescompile.validate import stats
from rescompile.validate.gates import FLOOR, Verdict, evaluate_gates, floor_applies, load_gates, merge_gates
from rescompile.validate.metrics import compare_outputs
from rescompile.validate.run import Measurement


def _onehot(pred: np.ndarray, classes: int, margin: float = 5.0) -> np.ndarray:
    out = np.zeros((len(pred), classes))
    out[np.arange(len(pred)), pred] = margin
    return out


def _paired(b: int, c: int, n: int, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, FP32 and INT8 logits with exactly b FP32-only and c INT8-only hits of n (classes balanced)."""
    labels = np.arange(n) % classes
    ref_pred, cand_pred = labels.copy(), labels.copy()
    ref_pred[b : b + c] = (labels[b : b + c] + 1) % classes  # FP32 wrong, INT8 right
    cand_pred[:b] = (labels[:b] + 1) % classes  # FP32 right, INT8 wrong
    return labels, _onehot(ref_pred, classes), _onehot(cand_pred, classes)


def _measure(ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None, names: list[str] | None = None) -> Measurement:
    m = compare_outputs(ref, cand, labels)
    return Measurement("val", len(ref), "fp32", "int8", None, m.accuracy, m.agreement, m.per_class, class_names=names or [])


# ---------------------------------------------------------------- intervals on the typed metrics


def test_every_accuracy_metric_carries_its_interval():
    labels, ref, cand = _paired(b=13, c=5, n=2000)
    m = compare_outputs(ref, cand, labels)
    d = m.accuracy.top1_drop_interval
    assert d == stats.top1_drop(13, 5, 2000)  # Tango, exact McNemar p
    assert d.point == pytest.approx(m.accuracy.top1_drop) == pytest.approx(0.4)
    assert m.agreement.top1_interval == stats.agreement_interval(2000 - 18, 2000)
    cos = m.agreement.cosine_interval
    assert cos.lo <= m.agreement.cosine_mean <= cos.hi and cos.hi <= 1.0 and cos.method == "t"
    assert m.agreement.margin.decisive == 2000 and m.agreement.margin.decisive_flips == 18
    # per class: Bonferroni level for 10 classes, Holm p, the same drop as the per-class counts give
    worst = m.per_class[0]
    assert worst.drop.level == pytest.approx(1 - 0.05 / 10) and worst.p_holm is not None
    assert worst.drop.point == pytest.approx(-worst.delta)
    json.dumps(m.to_dict(), allow_nan=False)  # plain, finite JSON


def test_without_labels_there_is_no_drop_interval_but_agreement_has_one():
    _, ref, cand = _paired(b=3, c=0, n=100)
    m = compare_outputs(ref, cand, None)
    assert m.accuracy.top1_drop_interval is None and m.per_class == []
    assert m.agreement.top1_interval.point == pytest.approx(97.0)


def test_intervals_are_deterministic():
    labels, ref, cand = _paired(b=7, c=2, n=500)
    assert compare_outputs(ref, cand, labels).to_dict() == compare_outputs(ref, cand, labels).to_dict()


# ---------------------------------------------------------------- --gate-mode


def test_confident_mode_fails_a_straddling_gate_and_says_how_many_samples_settle_it():
    labels, ref, cand = _paired(b=13, c=5, n=2000)  # drop 0.4 pt, interval about [-0.02, 0.85]
    m = _measure(ref, cand, labels)
    (point,) = evaluate_gates(m, Gates(max_top1_drop=0.5))
    (conf,) = evaluate_gates(m, Gates(max_top1_drop=0.5, mode="confident"))
    assert point.passed and point.mode == "point" and point.side == "straddles"
    assert not conf.passed and conf.side == "straddles"
    expected = stats.samples_to_settle(stats.top1_drop(13, 5, 2000), 0.5, "<=")
    assert conf.samples_to_settle == expected and expected > 2000
    assert f"straddles: ~{expected:,} samples would settle it" in conf.message
    assert (conf.lo, conf.hi) == pytest.approx((m.accuracy.top1_drop_interval.lo, m.accuracy.top1_drop_interval.hi))
    (safe,) = evaluate_gates(m, Gates(max_top1_drop=2.0, mode="confident"))
    assert safe.passed and safe.side == "safe" and safe.samples_to_settle is None


def test_confident_agreement_and_cosine_gates_judge_their_intervals():
    labels, ref, cand = _paired(b=13, c=5, n=2000)  # agreement 99.1%
    m = _measure(ref, cand, labels)
    agree_point, agree_conf = (evaluate_gates(m, Gates(min_agreement=99.0, mode=mode))[0] for mode in ("point", "confident"))
    assert agree_point.passed and not agree_conf.passed and agree_conf.side == "straddles"
    (cos,) = evaluate_gates(m, Gates(min_cosine=-0.5, mode="confident"))
    assert cos.passed and cos.side == "safe"


def test_latency_gates_have_no_interval():
    labels, ref, cand = _paired(b=1, c=0, n=100)
    m = _measure(ref, cand, labels)
    assert evaluate_gates(m, Gates(max_p99_ms=5.0, mode="confident"))[0].lo is None  # n/a: not measured, no interval


def test_gate_mode_from_yaml_and_flags(tmp_path):
    path = tmp_path / "gates.yaml"
    path.write_text("max-top1-drop: 1\nmode: confident\ndefault-floor: false\n")
    recipe = load_gates(path)
    assert recipe == Gates(max_top1_drop=1.0, mode="confident", default_floor=False)
    assert merge_gates(recipe, Gates(mode="point")).mode == "point"
    path.write_text("max-top1-drop: 1\nmode: sure\n")
    with pytest.raises(UsageError, match="unknown gate mode"):
        load_gates(path)


# ---------------------------------------------------------------- --max-class-drop


def test_class_gate_names_the_class_the_aggregate_hides():
    labels = np.arange(1000) % 10
    ref_pred, cand_pred = labels.copy(), labels.copy()
    hurt = np.flatnonzero(labels == 3)[:8]  # class 3 loses 8 of its 100: 8 pt; overall 0.8 pt
    cand_pred[hurt] = 4
    names = [f"c{i}" for i in range(10)]
    m = _measure(_onehot(ref_pred, 10), _onehot(cand_pred, 10), labels, names)
    top1, cls = evaluate_gates(m, Gates(max_top1_drop=1.0, max_class_drop=5.0))
    assert top1.passed and not cls.passed
    assert cls.value == pytest.approx(8.0) and "class 3 'c3'" in cls.message and "classes: class 3 'c3' 8.00" in cls.message
    counts = stats.class_counts(_onehot(ref_pred, 10), _onehot(cand_pred, 10), labels)
    decision = stats.decide_classes(stats.per_class_drop(counts), 5.0, "confident")
    (conf,) = evaluate_gates(m, Gates(max_class_drop=5.0, mode="confident"))
    assert not conf.passed and conf.side == decision.side and (conf.lo, conf.hi) == pytest.approx((decision.lo, decision.hi))
    (loose,) = evaluate_gates(m, Gates(max_class_drop=10.0))
    assert loose.passed and "classes:" not in loose.message


def test_class_gate_without_labels_fails_and_says_why():
    _, ref, cand = _paired(b=1, c=0, n=50)
    (g,) = evaluate_gates(_measure(ref, cand, None), Gates(max_class_drop=5.0))
    assert not g.passed and "no labels" in g.message


def test_class_gate_needs_labels_before_any_work():
    from rescompile.validate.gates import check_label_gates

    class Unlabelled:
        labelled = False

        def unlabelled_reason(self) -> str:
            return "the validation data has no labels"

    with pytest.raises(UsageError, match="--max-class-drop needs labelled validation data"):
        check_label_gates(Gates(max_class_drop=3.0), Unlabelled())  # type: ignore[arg-type]


# ---------------------------------------------------------------- the default floor


def _near_tied(rng: np.random.Generator, n: int = 1000, classes: int = 1000) -> np.ndarray:
    """Logits of a random-init network: every class within a whisker of the others."""
    return 8.0 + 0.3 * rng.standard_normal((n, classes))


def test_floor_passes_near_tied_logits_with_healthy_noise():
    rng = np.random.default_rng(0)
    ref = _near_tied(rng)
    cand = ref + 0.05 * 0.3 * rng.standard_normal(ref.shape)  # INT8-like error: 5% of the logit spread
    m = _measure(ref, cand, None)
    assert m.agreement.top1 < 97.0  # a bare agreement floor would fail this healthy model
    gates = evaluate_gates(m, Gates())
    assert [g.name for g in gates] == ["floor_cosine", "floor_margin_agreement", "floor_top1_drop"]
    assert all(g.passed for g in gates), [g.line() for g in gates]
    assert gates[2].abstained and "no labels" in gates[2].message  # no labels: the drop floor abstains
    assert all(g.mode == "floor" for g in gates)


def test_floor_fails_near_tied_logits_with_large_noise():
    rng = np.random.default_rng(0)
    ref = _near_tied(rng)
    cand = ref + 0.5 * 0.3 * rng.standard_normal(ref.shape)  # broken: half the logit spread
    gates = evaluate_gates(_measure(ref, cand, None), Gates())
    margin = next(g for g in gates if g.name == "floor_margin_agreement")
    assert not margin.passed and margin.side == "unsafe" and margin.hi < FLOOR.min_margin_agreement
    error = Verdict(gates).failure()
    assert error is not None and error.exit_code == 1 and "--auto-fallback" in (error.hint or "") and "--equalize" in (error.hint or "")


def test_floor_hint_leaves_out_the_remedies_the_build_already_used():
    rng = np.random.default_rng(0)
    ref = _near_tied(rng)
    gates = evaluate_gates(_measure(ref, ref + 0.5 * 0.3 * rng.standard_normal(ref.shape), None), Gates())
    hints = {tried: Verdict(gates).failure(tried=tried).hint or "" for tried in [(), ("equalize",), ("equalize", "auto_fallback")]}
    assert "--equalize" in hints[()] and "--auto-fallback" in hints[()]
    assert "--equalize" not in hints[("equalize",)] and "try also --auto-fallback" in hints[("equalize",)]
    both = hints[("equalize", "auto_fallback")]
    assert "even with --equalize and the search" in both and "try --equalize" not in both and "--no-default-gates" in both


def test_floor_abstains_when_no_sample_is_decisive():
    rng = np.random.default_rng(1)
    v = 8.0 + 0.3 * rng.standard_normal(1000)  # a random-init head: the same logits whatever the input ...
    top = np.argsort(v)
    v[top[-2]] = v[top[-1]] - 0.001  # ... whose top two are tied to the third decimal
    ref = v + 0.0002 * rng.standard_normal((200, 1000))
    cand = ref + 0.01 * rng.standard_normal(ref.shape)  # flips the tie on many samples
    margin = evaluate_gates(_measure(ref, cand, None), Gates())[1]
    assert margin.abstained and "no decisive sample" in margin.message


def test_floor_catches_a_broken_classifier_and_ignores_a_straddle():
    labels, ref, cand = _paired(b=300, c=20, n=2000)  # 14 pt lost: broken
    gates = {g.name: g for g in evaluate_gates(_measure(ref, cand, labels), Gates())}
    assert not gates["floor_top1_drop"].passed and gates["floor_top1_drop"].side == "unsafe"
    assert not gates["floor_margin_agreement"].passed
    labels, ref, cand = _paired(b=8, c=0, n=200)  # 4 pt over 200 samples: interval straddles 3 pt, not evidence
    drop = next(g for g in evaluate_gates(_measure(ref, cand, labels), Gates()) if g.name == "floor_top1_drop")
    assert drop.passed and drop.side == "straddles" and "samples would settle it" in drop.message


def test_floor_only_without_an_accuracy_gate_and_not_when_turned_off():
    assert floor_applies(Gates()) and floor_applies(Gates(max_p99_ms=5.0))
    assert not floor_applies(Gates(default_floor=False))
    for gate in ("max_top1_drop", "min_agreement", "min_cosine", "max_class_drop"):
        assert not floor_applies(Gates(**{gate: 1.0}))
    labels, ref, cand = _paired(b=300, c=20, n=2000)
    assert evaluate_gates(_measure(ref, cand, labels), Gates(default_floor=False)) == []


# ---------------------------------------------------------------- renderers


def test_junit_and_markdown_show_intervals_and_settling():
    labels, ref, cand = _paired(b=13, c=5, n=2000)
    m = _measure(ref, cand, labels)
    gates = evaluate_gates(m, Gates(max_top1_drop=0.5, mode="confident"))
    root = ET.fromstring(render_junit(m, gates, model="demo"))
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert float(props["top1_drop.lo"]) < 0.4 < float(props["top1_drop.hi"]) and props["top1_drop.method"] == "tango"
    assert "agreement.top1.lo" in props and "agreement.margin.top1" in props
    assert props["side"] == "straddles" and int(props["samples_to_settle"]) == gates[0].samples_to_settle
    rows = "\n".join(gate_rows(gates))
    assert "straddles (~" in rows and "confident" in rows and "**FAIL**" in rows
    floor = evaluate_gates(_measure(ref, cand, None), Gates())
    root = ET.fromstring(render_junit(m, floor, model="demo"))
    assert root.find("testsuite").get("skipped") == "1" and root.find(".//skipped") is not None


def test_remote_deploy_forwards_gate_mode_and_no_default_gates():
    from rescompile.deploy.remote import HostSpec, RemoteOptions, remote_deploy_command

    plain = remote_deploy_command(HostSpec("h"), RemoteOptions(), "f")
    assert "--gate-mode" not in plain and "--no-default-gates" not in plain
    cmd = remote_deploy_command(HostSpec("h"), RemoteOptions(gate_mode="confident", no_default_gates=True), "f")
    assert cmd.endswith("--gate-mode confident --no-default-gates")


def test_bundle_carries_the_gate_mode_and_the_floor_switch_and_deploy_overrides_them():
    from rescompile.deploy.bundle import bundle_gates
    from rescompile.deploy.device import DeployOptions, _device_gates

    class Build:
        config = {"gates": {"max_class_drop": 4.0, "max_p99_ms": 3.0, "mode": "confident", "default_floor": False}}

    doc = bundle_gates(Build(), None)
    assert doc == {
        "max_top1_drop": None,
        "min_agreement": None,
        "min_cosine": None,
        "max_class_drop": 4.0,
        "mode": "confident",
        "default_floor": False,
    }  # latency gates stay on the workstation
    gates = Gates(**doc)
    assert _device_gates(gates, DeployOptions(gate_mode="point")).mode == "point"
    assert _device_gates(Gates(), DeployOptions(no_default_gates=True)).default_floor is False
    with pytest.raises(UsageError, match="unknown gate mode"):
        _device_gates(gates, DeployOptions(gate_mode="maybe"))


def test_auto_fallback_aims_at_the_class_gate_in_the_chosen_mode():
    from rescompile.validate.gates import accuracy_gates, any_gate

    aimed = accuracy_gates(Gates(max_class_drop=3.0, max_p99_ms=5.0, mode="confident"))
    assert aimed == Gates(max_class_drop=3.0, mode="confident") and any_gate(aimed)
