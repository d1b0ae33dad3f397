"""Which data calibrates and which validates a build, in particular when the user names no ``--val``.

- ``--val`` given: that set validates ("given"); calibration uses all of ``--calib``.
- The demo model without ``--val``: its own labelled test set, ``demo-val`` ("demo").
- Any other model without ``--val``:
  - the calibration data has at least ``SPLIT_MIN_SAMPLES`` (256 = 2 x ``MIN_CALIBRATION``)
    samples: a seeded held-out split validates ("held-out"): ``HELD_OUT_FRACTION`` (20 %) of the
    samples, at most ``MAX_HELD_OUT`` (1,000), stratified by label when the data has labels. The
    held-out samples are NOT used for calibration; ``--calib-size`` then picks from the rest.
  - else the calibration inputs themselves validate ("in-sample"), without labels: only the
    label-free metrics (top-1 agreement with FP32, logit cosine) are reported, and every report
    marks them as in-sample (they measure INT8 on the very data that set its ranges).

The same seed gives the same split, so ``rescompile validate BUILD`` re-creates it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from rescompile.data.sources import DataSource, open_source, subset, subset_indices, take
from rescompile.errors import UsageError

DEMO_MODEL = "demo"
DEMO_VAL = "demo-val"
MIN_CALIBRATION = 128  # the fewest calibration samples a held-out split may leave behind
SPLIT_MIN_SAMPLES = 2 * MIN_CALIBRATION  # calibration data this large (or larger) is split
HELD_OUT_FRACTION = 0.2
MAX_HELD_OUT = 1000  # validation time stays bounded on a large calibration set
MODES = ("given", "demo", "held-out", "in-sample")


def held_out_count(total: int) -> int:
    """How many of ``total`` calibration samples are held out for validation (0: too few to split)."""
    if total < SPLIT_MIN_SAMPLES:
        return 0
    return min(MAX_HELD_OUT, int(round(total * HELD_OUT_FRACTION)))


@dataclass(frozen=True)
class DataChoice:
    """The calibration and validation sources of a build, and how the validation set was chosen."""

    mode: str  # one of MODES
    calib: DataSource | None  # None where only validation data is chosen (rescompile validate, given or demo)
    val: DataSource
    calib_spec: str  # --calib as given
    seed: int
    calib_total: int  # samples in --calib before any split or --calib-size subset
    held_out: int  # samples held out of --calib for validation (mode "held-out"), else 0

    @property
    def calibration(self) -> DataSource:
        """The calibration source (set by ``choose_data``; only ``validation_only`` choices lack one)."""
        if self.calib is None:
            raise RuntimeError("this DataChoice holds validation data only")
        return self.calib

    @property
    def labelled(self) -> bool:
        return self.val.labels is not None

    @property
    def in_sample(self) -> bool:
        return self.mode == "in-sample"

    def describe(self) -> str:
        """What validates, and what that means (the console prints it after ``validation: ``)."""
        n = self.val.count
        if self.mode == "demo":
            return f"{DEMO_VAL}, the demo model's own labelled test set ({n} samples)"
        if self.mode == "given":
            labels = "labelled" if self.labelled else "no labels: top-1 agreement and cosine only"
            return f"{self.val.name} ({n} samples, {labels})"
        if self.mode == "held-out":
            labels = "labelled" if self.labelled else "no labels: top-1 agreement and cosine only"
            used = self.calib_total - self.held_out
            kept = used if self.calib is None else self.calib.count
            calib = f"the other {used}" if kept == used else f"{kept} of the other {used}"
            sub = "" if n == self.held_out else f", {n} of them used"
            return (
                f"no --val, so a held-out split of {self.calib_spec}: {self.held_out} of "
                f"{self.calib_total} samples (seed {self.seed}{sub}; {labels}), not used for calibration; "
                f"calibration uses {calib}"
            )
        return (
            f"IN-SAMPLE: no --val and {self.calib_spec} has {self.calib_total} samples (a held-out split "
            f"needs {SPLIT_MIN_SAMPLES}): INT8 is compared with FP32 on {n} of the calibration inputs themselves, "
            "label-free (top-1 agreement, cosine), likely better than on unseen data; pass --val for an "
            "independent check"
        )

    def unlabelled_reason(self) -> str:
        """Why there are no labels (for the error of a gate that needs them)."""
        if self.mode == "given":
            return f"--val {self.val.name} has no labels"
        if self.mode == "held-out":
            return f"no --val was given and the held-out split of {self.calib_spec} has no labels"
        return (
            f"no --val was given and {self.calib_spec} ({self.calib_total} samples, fewer than {SPLIT_MIN_SAMPLES}) "
            "is too small for a held-out split, so validation is in-sample and label-free"
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "mode": self.mode,
            "in_sample": self.in_sample,
            "labelled": self.labelled,
            "source": self.val.name,
            "samples": self.val.count,
        }
        if self.calib is not None:
            d.update(
                {
                    "calibration_source": self.calib.name,
                    "calibration_samples": self.calib.count,
                    "calibration_total": self.calib_total,
                    "held_out": self.held_out,
                    "seed": self.seed,
                    "split_min_samples": SPLIT_MIN_SAMPLES,
                    "held_out_fraction": HELD_OUT_FRACTION,
                }
            )
        d["description"] = self.describe()
        return d

    @classmethod
    def validation_only(cls, mode: str, val: DataSource, seed: int = 0) -> DataChoice:
        """A choice of validation data alone (``given`` or ``demo``), with no calibration data."""
        return cls(mode, None, val, "", seed, 0, 0)


def choose_data(
    model: str,
    calib: str,
    val: str | None,
    *,
    layout: str = "nchw",
    calib_size: int | None = None,
    val_size: int | None = None,
    seed: int = 0,
) -> DataChoice:
    """Open the calibration and validation sources of a build (see the module docstring for the rules).

    Args:
        model: the model spec (only ``demo`` changes the default).
        calib: ``--calib``.
        val: ``--val``, or None for the default.
        calib_size: a seeded subset of this many calibration samples (after the held-out split).
        val_size: a seeded subset of this many validation samples.
        seed: the seed of the split and of both subsets.

    Raises:
        UsageError: unreadable data (from open_source).
    """
    full = open_source(calib, layout=layout)
    if val is not None or model == DEMO_MODEL:  # as open_source(calib, limit=calib_size, seed=seed)
        calib_src = subset(full, calib_size, seed) if calib_size is not None and calib_size < full.count else full
        val_src = open_source(val or DEMO_VAL, layout=layout, limit=val_size, seed=seed)
        return DataChoice("given" if val is not None else "demo", calib_src, val_src, str(calib), seed, full.count, 0)
    n_held = held_out_count(full.count)
    if n_held:
        held_idx = subset_indices(full, n_held, seed)
        rest_idx = np.setdiff1d(np.arange(full.count), held_idx, assume_unique=True)
        val_src = take(full, held_idx, f"{full.name}[held-out {n_held} of {full.count}, seed {seed}]")
        calib_src = take(full, rest_idx, f"{full.name}[calibration {len(rest_idx)} of {full.count}]")
        mode = "held-out"
    else:
        calib_src = full
        mode = "in-sample"
    if calib_size is not None and calib_size < calib_src.count:
        calib_src = subset(calib_src, calib_size, seed)
    if mode == "in-sample":  # label-free: accuracy on the samples that set the ranges would flatter INT8
        val_src = replace(calib_src, name=f"{calib_src.name} (in-sample)", labels=None, class_names=[])
    if val_size is not None and val_size < val_src.count:
        val_src = subset(val_src, val_size, seed)
    return DataChoice(mode, calib_src, val_src, str(calib), seed, full.count, n_held)


def validation_data(val: str | None, build: dict[str, Any] | None, ref_spec: str, layout: str, val_size: int | None) -> DataChoice:
    """The validation data (a DataChoice) when no saved reference brings its own.

    ``--val`` if given; else a build folder's own choice, re-created from its manifest (the same
    held-out split of its calibration data, or its in-sample set); else demo-val for the demo
    model; else a UsageError: a non-demo model needs ``--val``.
    """
    if val is not None:
        return DataChoice.validation_only("given", open_source(val, layout=layout, limit=val_size, seed=0))
    if build is not None:
        cfg = build.get("config", {})
        seed = int(cfg.get("seed", 0))
        size = val_size if val_size is not None else cfg.get("val_size")
        if cfg.get("val") is not None or cfg.get("model") == DEMO_MODEL:  # its --val (or demo-val): no calibration data needed
            spec = cfg.get("val") or DEMO_VAL
            return DataChoice.validation_only(
                "given" if cfg.get("val") else "demo", open_source(spec, layout=layout, limit=size, seed=seed), seed
            )
        built_layout = (build.get("data", {}).get("validation_choice") or {}).get("layout", cfg.get("layout", layout))
        try:  # the build validated on data taken from its --calib: the same seed re-creates the same split
            return choose_data(
                cfg.get("model", ""), cfg["calib"], None, layout=built_layout, calib_size=cfg.get("calib_size"), val_size=size, seed=seed
            )
        except UsageError as exc:
            raise UsageError(
                f"cannot re-create the build's validation data from its --calib: {exc.message}",
                hint="run from the folder the build ran in, or pass --val",
            ) from None
    if ref_spec == DEMO_MODEL:
        return DataChoice.validation_only("demo", open_source(DEMO_VAL, layout=layout, limit=val_size, seed=0))
    raise UsageError(
        f"no validation data: --val is needed to validate against {ref_spec} (demo-val fits only the demo model)",
        hint="pass --val: an image folder with class subfolders or a labelled .npz for accuracy, or unlabelled "
        "inputs (e.g. the calibration .npy) for top-1 agreement and cosine; a build folder brings its own",
    )
