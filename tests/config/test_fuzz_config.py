"""Fuzzing the configuration: every numeric key at values in and out of range, and corrupted params files.

A value must load exactly when an independent statement of its documented range accepts it, and an error must name
the key (and the profile it sits in); a params file that must fail names the file, and the line of a key given
twice.
"""

import math
import re

import numpy as np
import pytest

from fuzzing import SEED, Failures, flip_bytes, random_bytes

# Pillow and pydicom warn about the corrupt files they are fed; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


def _in(lo, hi, *, lo_open=False):
    """A predicate: lo <= v <= hi (lo < v when ``lo_open``)."""
    return lambda v: (lo < v if lo_open else lo <= v) and v <= hi


# An independent statement of each numeric key's documented range: (kind, predicate). "int" takes only integers,
# "float" any finite number, "int?" an integer or null. The run `r` and the base train on isbi2015 (one fold).
CONFIG_RANGES = {
    "seed": ("int", _in(0, 2**32 - 1)),
    "datasets.isbi2015.split_seed": ("int", _in(0, 2**32 - 1)),
    "data.fold": ("int", lambda v: v == 1),
    "data.train_limit": ("int?", lambda v: v > 0),
    "heatmap.sigma_px": ("float", _in(0.5, 100)),
    "loss.alpha": ("float", lambda v: v >= 1),
    "loss.awing_omega": ("float", lambda v: v > 0),
    "loss.awing_theta": ("float", lambda v: v > 0),
    "loss.awing_epsilon": ("float", lambda v: v > 0),
    "loss.awing_alpha": ("float", lambda v: v > 1),
    "model.fr_input_kernel": ("int", lambda v: v in (1, 3, 5, 7)),
    "train.lr": ("float", _in(0, 1, lo_open=True)),
    "train.lr_gamma": ("float", _in(0, 1, lo_open=True)),
    "train.epochs": ("int", lambda v: v > 0),
    "train.batch_size": ("int", lambda v: v > 0),
    "train.num_workers": ("int", lambda v: v >= 0),
    "train.checkpoint_every": ("int", lambda v: v > 0),
    "eval.batch_size": ("int", lambda v: v > 0),
}
CONFIG_VALUES = [0, 1, -1, 2, 3, 7, 99, 2**31, 2**32 - 1, 2**32, 10**23, -(10**23), 0.0, -0.0, 0.1, 0.5, 1.0, 1.5,
                 40.0, 100.0, 100.5, 1e-300, 1e300, math.inf, -math.inf, math.nan, "1e-4", "x", None, True, False,
                 [], {}, [1]]


def reference_config_value(key, value):
    """Whether the documented range accepts ``value`` for ``key``."""
    kind, ok = CONFIG_RANGES[key]
    if value is None:
        return kind == "int?"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if kind in ("int", "int?"):
        return isinstance(value, int) and ok(value)
    return math.isfinite(value) and ok(float(value))


def config_with(key, value, place):
    """A tiny params mapping with ``key`` set to ``value`` in the base, in run `r` or in profile `p`."""
    raw = {"runs": {"r": {"dataset": "isbi2015"}}, "profiles": {"p": {}}}
    section = {"base": raw, "run": raw["runs"]["r"], "profile": raw["profiles"]["p"]}[place]
    *parents, leaf = key.split(".")
    for part in parents:
        section = section.setdefault(part, {})
    section[leaf] = value
    return raw


def load_config(raw):
    """What load_params does after reading the file: the run `r` as asked for, then every run under every
    profile."""
    from farnet.config import check_every_run, params_from_dict

    params = params_from_dict(raw, run="r")
    check_every_run(raw)
    return params


def test_fuzz_config_values():
    failures = Failures()
    cases = 0
    for i, (key, value) in enumerate((k, v) for k in CONFIG_RANGES for v in CONFIG_VALUES):
        place = ("base", "run", "profile")[i % 3]
        case = f"{key}={value!r} in {place}"
        outcome, params = failures.run(case, load_config, config_with(key, value, place))
        cases += 1
        if outcome == "crash":
            continue
        if reference_config_value(key, value):
            failures.check(case, outcome == "ok", f"valid value refused: {params}")
            if outcome == "ok" and place != "profile":  # profile p is not the selected one
                loaded = params
                for part in key.replace("datasets.isbi2015", "dataset").split("."):
                    loaded = getattr(loaded, part)
                expected = float(value) if CONFIG_RANGES[key][0] == "float" else value
                failures.check(case, loaded == expected and type(loaded) is type(expected), f"loaded as {loaded!r}")
        else:
            failures.check(case, outcome == "error", "invalid value accepted")
            if outcome == "error":
                failures.check(case, key.split(".", 1)[-1] in str(params), f"error does not name the key: {params}")
                if place == "profile":
                    failures.check(case, "profile 'p'" in str(params), f"error does not name the profile: {params}")
    failures.report()
    assert cases >= 500


def params_file_cases(rng, text):
    """(case, bytes, expected): expected "ok", "error" (naming the file), "twice" (a duplicate key), "alias", or
    "any" (may load or fail, naming the file)."""
    lines = text.splitlines()
    yield "committed", text.encode(), "ok"
    keyed = [i for i, line in enumerate(lines) if re.match(r"^ *[a-z_0-9]+: *[^ #]", line)]  # a key and its value
    for n in range(25):
        i = keyed[int(rng.integers(0, len(keyed)))]
        duplicated = lines[: i + 1] + [lines[i]] + lines[i + 1:]
        yield f"duplicate line {i + 1} #{n}", "\n".join(duplicated).encode(), "twice"
    for n in range(10):
        i = keyed[int(rng.integers(0, len(keyed)))]
        anchored = lines.copy()
        anchored[i] = anchored[i].replace(":", ": &x", 1)
        yield f"anchor on line {i + 1} #{n}", "\n".join(anchored).encode(), "alias"
    for n in range(20):
        yield f"flips#{n}", flip_bytes(text.encode(), rng), "any"
    for n in range(10):
        cut = int(rng.integers(0, len(text)))
        yield f"truncated@{cut}", text.encode()[:cut], "any"
    yield "deep flow", b"a: " + b"[" * 3000 + b"]" * 3000 + b"\n", "error"  # deeper than Python's recursion limit
    yield "deep block", "".join(f"{' ' * i}k{i}:\n" for i in range(3000)).encode(), "error"
    yield "laughs", ("a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 12))).encode(), "alias"
    yield "empty", b"", "error"
    yield "list", b"- 1\n- 2\n", "error"
    yield "utf16", text.encode("utf-16"), "ok"
    yield "latin1 junk", b"seed: \xff\xfe0\n", "error"
    for n in range(5):
        yield f"random_bytes#{n}", random_bytes(rng, int(rng.integers(1, 2000))), "any"


def test_fuzz_params_files(tmp_path):
    from farnet.config import load_params
    from helpers import committed_params_text

    rng = np.random.default_rng(SEED + 10)
    failures = Failures()
    cases = list(params_file_cases(rng, committed_params_text()))
    for i, (case, data, expected) in enumerate(cases):
        path = tmp_path / f"params{i}.yaml"
        path.write_bytes(data)
        outcome, value = failures.run(case, load_params, path)
        if outcome == "crash":
            continue
        if outcome == "error":
            failures.check(case, str(path) in str(value), f"error does not name the file: {value}")
        if expected == "ok":
            failures.check(case, outcome == "ok", f"valid file refused: {value}")
        elif expected != "any":
            failures.check(case, outcome == "error", "loaded a file that must fail")
            if outcome == "error" and expected == "twice":
                line = int(case.split()[2]) + 1  # the copy, one line below the original
                failures.check(case, f"{path}:{line}: " in str(value) and "given twice" in str(value), f"{value}")
            if outcome == "error" and expected == "alias":
                failures.check(case, "anchors and aliases" in str(value), f"{value}")
    failures.report()
    assert len(cases) >= 70
