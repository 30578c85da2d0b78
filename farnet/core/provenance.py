"""How a result was made: git commit, parameter hash, hardware, and the provenance header of every table.

Every table and plot under ``results/`` opens with the facts a reader needs to judge it (paper §4.2 and
docs/design.md §5): which profile ran, on which data, with or without ImageNet weights, for how long, on which
machine, from which commit and parameters. A run is called a replication of the paper's protocol only when
it used the paper profile, the full data set and ImageNet weights; anything else is labelled REDUCED, with
the reasons, so a quick CPU run can never be mistaken for the paper's numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

UNKNOWN = "unknown"


# What a pipeline run itself rewrites: `dvc exp run -S` edits params.yaml (the params hash records its values),
# DVC writes dvc.lock, the stages write results/. A change anywhere else is a change of the code.
NOT_CODE = ("params.yaml", "dvc.lock", "results/")


def git_commit(repo_dir: str | Path) -> str:
    """Short hash of HEAD in ``repo_dir``, with ``-dirty`` when tracked code differs from it.

    Untracked files do not count (as with ``git describe --dirty``), nor do :data:`NOT_CODE`: what the
    pipeline itself writes. So ``-dirty`` means the code that ran was not the commit named.

    Returns:
        e.g. ``"3f2a9c1"`` or ``"3f2a9c1-dirty"``; ``"unknown"`` outside a git work tree, in a repository
        without commits, or without git.
    """
    try:
        head = _git(repo_dir, "rev-parse", "--short", "HEAD")
        changed = _git(repo_dir, "diff", "--name-only", "HEAD")  # tracked files, staged or not
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    code = [path for path in changed.splitlines() if not path.startswith(NOT_CODE)]
    return f"{head}-dirty" if code else head


#: the checkout whose code is running (the source tree of an editable install): a run records its commit, whatever
#: the working directory. A pipeline run in one checkout with an environment installed from another runs the
#: other's code, and the working directory's commit would name code that did not run.
CODE_ROOT = Path(__file__).resolve().parents[2]


def code_commit() -> str:
    """:func:`git_commit` of the code that is running (:data:`CODE_ROOT`); ``"unknown"`` for an installed copy that
    is no source tree (a wheel in site-packages: the git work tree around it, if any, is not its code)."""
    if not (CODE_ROOT / "pyproject.toml").is_file():
        return UNKNOWN
    return git_commit(CODE_ROOT)


#: the files whose contents decide what a run computes (the code and its parameters), for :func:`code_digest`
CODE_FILES = ("farnet/**/*.py", "baselines/**/*.py", "farnet/report/reference/*.yaml", "params.yaml")


def code_digest(root: str | Path) -> str:
    """A sha256 over the paths and contents of :data:`CODE_FILES` under ``root``: the code of a run made where
    there is no git (a working tree copied to a GPU node), to be matched to a commit where there is
    (:func:`commit_of_digest`)."""
    root = Path(root)
    digest = hashlib.sha256()
    files = {p for pattern in CODE_FILES for p in root.glob(pattern) if p.is_file() and "__pycache__" not in p.parts}
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def commit_of_digest(digest: str, repo_dir: str | Path) -> str | None:
    """The commit (short hash) of ``repo_dir`` whose code has ``digest``: its HEAD, when the work tree's code is
    HEAD's and hashes to it; else None (the run's code is not this checkout's)."""
    commit = git_commit(repo_dir)
    if commit == UNKNOWN or commit.endswith("-dirty") or code_digest(repo_dir) != digest:
        return None
    return commit


def committed_text(path: str | Path) -> str | None:
    """The text of ``path`` as HEAD of its git work tree has it; None outside git, without commits or when HEAD
    does not have the file."""
    path = Path(path).resolve()
    try:
        return _git(path.parent, "show", f"HEAD:./{path.name}")
    except (OSError, subprocess.SubprocessError):
        return None


def _git(repo_dir: str | Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo_dir), *args],
        capture_output=True, text=True, timeout=10, check=True,
    )
    return done.stdout.strip()


def params_hash(params: Mapping[str, Any]) -> str:
    """First 12 hex digits of the sha256 of ``params`` as canonical JSON (sorted keys, no spaces).

    Equal parameter sets give equal hashes whatever the key order.

    Raises:
        TypeError: when a value is not JSON-serialisable (e.g. a Path: convert it first).
    """
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def hardware_description() -> str:
    """One line naming the CPU model, its core count and vector unit (CPUs of one name differ: an EPYC with
    AVX-512 BF16 runs the network at another speed than one with AVX2 only), the torch version and the CUDA
    device (if any)."""
    parts = [f"{_cpu_model()} ({_cpu_count()} cores, {cpu_isa()})"]
    try:
        import torch  # imported here: provenance is also used by stages that never touch a model
    except ImportError:
        parts.append("torch not installed")
    else:
        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.append(f"CUDA {torch.version.cuda}: {torch.cuda.get_device_name(0)}")
        else:
            parts.append("no CUDA device")
    return ", ".join(parts)


def cpu_kind() -> str:
    """The CPU model with its vector unit, e.g. ``"AMD EPYC avx512-bf16"``: what a time measured on it depends on."""
    return f"{_cpu_model()} {cpu_isa()}"


def cpu_isa() -> str:
    """The widest vector unit of this CPU that the convolutions use: amx, avx512-bf16, avx512, avx2 or sse."""
    flags = set(cpuinfo().get("flags", "").split())
    for flag, tag in (("amx_bf16", "amx"), ("avx512_bf16", "avx512-bf16"), ("avx512f", "avx512"), ("avx2", "avx2")):
        if flag in flags:
            return tag
    return "sse"


def cpuinfo() -> dict[str, str]:
    """The first processor's entries of ``/proc/cpuinfo`` (``model name``, ``flags``, ``cpu MHz``, ...); empty where
    there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info.setdefault(key.strip(), value.strip())
    return info


def _cpu_model() -> str:
    return cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown CPU"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use, not the whole host's
    except AttributeError:
        return os.cpu_count() or 1


def replication_gaps(run_info: Mapping[str, Any]) -> list[str]:
    """Why a run is not the paper's protocol; empty only for profile ``paper``, full set, ImageNet weights (and,
    where the run info records them, the full schedule, lossless inputs and fp32 training).

    Missing profile, weights or data keys count against the run: nothing is claimed that the run info does not
    state. Numerics count only when recorded (:func:`trained_in_bf16`).
    """
    gaps = []
    profile = run_info.get("profile")
    if profile != "paper":
        epochs = run_info.get("epochs")
        schedule = f", {epochs} epochs instead of 300" if epochs is not None else ""
        gaps.append(f"'{profile or UNKNOWN}' profile{schedule}")
    pretrained = run_info.get("pretrained")
    if pretrained == "none":
        gaps.append("random initialisation: ImageNet weights unavailable")
    elif pretrained != "imagenet":
        gaps.append(f"backbone weights '{pretrained or UNKNOWN}' instead of ImageNet")
    if run_info.get("full_set") is not True:
        n_train = run_info.get("n_train_images")
        gaps.append(f"data sample only ({n_train if n_train is not None else UNKNOWN} training images), "
                    "not the full data set")
    schedule = run_info.get("schedule")
    if isinstance(schedule, Mapping) and schedule.get("full") is False:
        gaps.append(schedule_note(schedule))
    form = run_info.get("data_form")
    if isinstance(form, Mapping) and form.get("form") != "lossless":
        gaps.append(f"inputs re-encoded ({data_form_note(form)})")
    if trained_in_bf16(run_info):
        gaps.append("bf16 autocast instead of the paper's fp32 (train.precision: fp32 restores it)")
    return gaps


def trained_in_bf16(run_info: Mapping[str, Any]) -> bool:
    """Whether the run trained under bf16 autocast, where the paper trains in fp32 (a deviation of ``"auto"``).

    ``fast_path`` (what ``train.precision`` resolved to on the run's device, e.g. ``"bf16+channels_last"``) decides;
    without it, only an explicit ``precision: bf16`` does, since ``"auto"`` alone does not say what ran.
    """
    fast_path = run_info.get("fast_path")
    if fast_path:
        return str(fast_path).split("+")[0] == "bf16"
    return run_info.get("precision") == "bf16"


def schedule_note(schedule: Mapping[str, Any]) -> str:
    """e.g. ``"reduced schedule (time budget): 40 of 300 epochs, lr drop at [27]"`` (train_info's ``schedule``)."""
    why = schedule.get("reduced_by") or "stopped"
    drops = schedule.get("lr_milestones")
    text = (f"reduced schedule ({why}): {schedule.get('epochs')} of {schedule.get('planned_epochs')} epochs, "
            + (f"lr drop at {drops}" if drops else "no lr drop"))
    if schedule.get("stopped"):
        text += f", stopped ({schedule['stopped']}) after {schedule.get('steps')} steps"
    return text


def data_form_note(form: Mapping[str, Any]) -> str:
    """e.g. ``"carry: jpeg q90, lossy, mean |Δ grey| 0.61"`` (a carry's ``carry.json``)."""
    quality = f" q{form['quality']}" if form.get("quality") is not None else ""
    diff = form.get("mean_abs_diff")
    text = f"carry: {form.get('codec', UNKNOWN)}{quality}, {form.get('form', UNKNOWN)}"
    return text + (f", mean |Δ grey| {diff:.3g} of 255" if isinstance(diff, (int, float)) else "")


def run_label(run_info: Mapping[str, Any]) -> str:
    """Short label for plot titles, e.g. ``"quick profile — not a replication"``."""
    profile = run_info.get("profile") or UNKNOWN
    if replication_gaps(run_info):
        return f"{profile} profile — not a replication"
    return f"{profile} profile — paper protocol"


def provenance_header(run_info: Mapping[str, Any], *, gaps: Sequence[str] | None = None,
                      extra: Sequence[str] = ()) -> str:
    """Markdown block stating how a run was made, to open every table built from it.

    Args:
        run_info: the run's ``results/runs/<name>.json`` (keys as written by the train stage; missing keys
            are shown as "unknown").
        gaps: why the run is not the paper's protocol, when the run states it itself (``farnet replicate``'s
            ``replication_gaps``, which also weigh the input size); default :func:`replication_gaps`.
        extra: further lines, placed before the verdict.

    Returns:
        A Markdown block quote ending with a bold verdict: the paper's protocol, or REDUCED with reasons.
    """
    def get(key: str) -> Any:
        return run_info.get(key, UNKNOWN)

    n_train = get("n_train_images")
    extent = "full set" if run_info.get("full_set") is True else "sample"
    note = f" — {run_info['data_note']}" if run_info.get("data_note") else ""
    pretrained = get("pretrained")
    weights = "none (random initialisation)" if pretrained == "none" else pretrained
    hw = run_info.get("input_hw")
    input_size = f"{hw[0]} × {hw[1]} (H × W)" if hw else UNKNOWN
    lines = [
        "**Provenance**",
        "",
        f"- Experiment: {get('experiment')} on {get('dataset')}; backbone {get('backbone')}",
        f"- Profile: {get('profile')}",
        f"- Data: {get('data_source')} ({extent}, {n_train} training images){note}",
        f"- Pretrained weights: {weights}",
        f"- Training: {get('epochs')} epochs, {get('steps')} steps; optimiser {get('optimizer')}; "
        f"loss {get('loss')} (α = {get('alpha')}); model selection: {get('select')}",
        f"- Input size: {input_size}",
        *([f"- Data form: {data_form_note(run_info['data_form'])}"] if run_info.get("data_form") else []),
        f"- Hardware: {get('hardware')}; numerics {run_info.get('fast_path') or get('precision')}",
        f"- Train wall time: {_format_seconds(run_info.get('train_wall_s'))}",
        f"- Git commit: {get('git_commit')}" + _code_note(str(get("git_commit"))),
        f"- Params hash: {get('params_hash')}",
        f"- Date: {get('date')}",
        *extra,
        "",
    ]
    gaps = replication_gaps(run_info) if gaps is None else list(gaps)
    if gaps:
        lines.append("**REDUCED RUN — not a replication of the paper's protocol:** " + "; ".join(gaps) + ".")
    else:
        lines.append("**Protocol: the paper's (paper profile, full data set, ImageNet-pretrained backbone).**")
    return "\n".join(f"> {line}" if line else ">" for line in lines) + "\n"


def _code_note(commit: str) -> str:
    if commit == UNKNOWN:
        return ""
    if commit.endswith("-dirty"):
        return " (the code that ran differed from this commit)"
    return " (the code that ran, as committed; params.yaml as the params hash says)"


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return UNKNOWN
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds:.1f} s ({seconds / 60:.1f} min)"
    return f"{seconds:.1f} s ({seconds / 3600:.2f} h)"
