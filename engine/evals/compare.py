"""One eval run: sides on one base, per-example records, aggregates and paired differences.

`run_eval(cfg)` is the recipe every front end calls (the CLI, the daemon's `eval` job, the
training run's light eval):

1. the held-out examples are rebuilt exactly as the adapter's training split them (the run card
   gives data, mode, sequence length, split seed and fraction), so no example was trained on;
2. the base is loaded once and every adapter (or every checkpoint of a sweep) switched on it;
   a probe checks that each adapter side really differs from the base;
3. every side scores the same examples; one record per example, side and task;
4. aggregates come from the records, and each comparison is a paired test on them.

Knows the engine's stages; nothing of the daemon or the console.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError, DataError
from engine.evals import loss as loss_metric
from engine.evals import reversibility, stats
from engine.evals.records import EvalRecord, by_side, paired
from engine.evals.sides import BASE, Side, Sides, adapter_side, checkpoint_sides, ensure_vocabulary

EVAL_SCHEMA = "hyperlex.eval/1"
TASKS = ("loss", "text", "reverse", "test", "register", "density", "assoc", "roundtrip")
DEFAULT_TASKS = ("loss", "reverse", "test", "register", "density", "roundtrip")
METRIC_INFO: dict[str, dict[str, str]] = {
    "loss.ppl": {"label": "held-out perplexity, answer tokens", "better": "lower"},
    "loss.bpb": {"label": "held-out bits per byte, answer tokens", "better": "lower"},
    "loss.seq_ppl": {"label": "held-out perplexity, whole sequence", "better": "lower"},
    "loss.field_ppl": {"label": "perplexity of structure tokens", "better": "lower"},
    "loss.text_ppl": {"label": "perplexity of text tokens", "better": "lower"},
    "text.ppl": {"label": "perplexity of plain scene text", "better": "lower"},
    "reverse.chrf": {"label": "reversibility chrF++", "better": "higher"},
    "reverse.exact": {"label": "reversibility exact match", "better": "higher"},
    "register.agree": {"label": "register agreement of answers", "better": "higher"},
    "test.pass": {"label": "manual tests passed", "better": "higher"},
    "judge.b_win_rate": {"label": "judge: share won by B", "better": "higher"},
}


@dataclass
class EvalConfig:
    """What one eval is asked to do.

    `adapters` are (name, dir) pairs; `vs` names the side every other is compared against
    ("base" by default; an adapter's name for A against B). `sweep` is a run dir whose
    checkpoints become sides. `tests` is a manual test file (engine.evals.testsets).
    """

    profile: Any
    adapters: list[tuple[str, Path]] = field(default_factory=list)
    vs: str | None = BASE
    sweep: Path | None = None
    tests: Path | None = None
    data: Path | None = None
    mode: str | None = None
    tasks: tuple[str, ...] = DEFAULT_TASKS
    limit: int | None = None  # held-out examples per task at most
    reverse_limit: int = 24
    reverse_path: str = "sceneformer"  # the way out: the scene's structure, or the side writes it
    seed: int = 0
    n_resamples: int = 2000
    include_base: bool = False  # a base side even when comparing adapters with each other
    backend: str = "hf"  # what scores: hf, llamacpp (GGUF, logits of every position), openai
    judge: str | None = None  # PROFILE[:BACKEND] of an automatic pairwise judge
    judge_limit: int | None = 40  # pairs judged at most, per comparison
    ratings: Path | None = None  # people's ab_ratings.jsonl, ranked with Bradley–Terry
    out_dir: Path | None = None
    work_dir: Path | None = None
    on_event: Callable[[dict[str, Any]], None] | None = None


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    records: list[EvalRecord]
    paths: dict[str, Any] = field(default_factory=dict)


def _emit(cfg: EvalConfig, event: dict[str, Any]) -> None:
    if cfg.on_event is not None:
        cfg.on_event(event)


def run_card_of(adapter_dir: Path) -> dict[str, Any] | None:
    """The run card an adapter was saved with, if any."""
    card = Path(adapter_dir) / "hyperlex_run_card.json"
    return json.loads(card.read_text()) if card.is_file() else None


def trained_profile(profile: Any, card: dict[str, Any] | None) -> Any:
    """The profile with the training knobs that shaped the adapter's held-out split."""
    if not card:
        return profile
    trained = card.get("profile", {}).get("training", {})
    knobs = {key: trained[key] for key in ("max_seq_len", "held_out_fraction", "seed",
                                           "context_k") if key in trained}
    return dataclasses.replace(profile, training=dataclasses.replace(profile.training, **knobs))


def _sides(cfg: EvalConfig) -> list[Side]:
    sides: list[Side] = []
    if cfg.vs in (BASE, None) or cfg.sweep is not None or cfg.include_base:
        sides.append(Side(BASE, "base"))
    for name, directory in cfg.adapters:
        sides.append(adapter_side(name, directory))
    if cfg.sweep is not None:
        work = (Path(cfg.work_dir) / "sweep" if cfg.work_dir else
                Path(tempfile.mkdtemp(prefix="hyperlex-sweep-")))
        sides += checkpoint_sides(cfg.sweep, work)
    if cfg.vs not in (None, BASE) and cfg.vs not in {side.name for side in sides}:
        raise ConfigError(f"--vs {cfg.vs}: no side of that name",
                          hint=f"one of: base, {', '.join(s.name for s in sides)}")
    if len(sides) < 1:
        raise ConfigError("nothing to evaluate", hint="give --adapter DIR, or --sweep RUN")
    return sides


def _reference_card(cfg: EvalConfig) -> tuple[dict[str, Any] | None, Path | None]:
    for _, directory in cfg.adapters:
        card = run_card_of(directory)
        if card:
            return card, Path(directory)
    if cfg.sweep is not None:
        return run_card_of(Path(cfg.sweep) / "adapter"), Path(cfg.sweep) / "adapter"
    return None, None


def held_out(profile: Any, hypertokenizer: Any, scenes: list[Any], mode: str) -> list[Any]:
    """The held-out samples of `mode`, split as training splits them."""
    from engine.data import build_training_data

    return build_training_data(profile, hypertokenizer, scenes, mode).held_out


def _data_path(cfg: EvalConfig, card: dict[str, Any] | None) -> Path | None:
    if cfg.data is not None:
        return Path(cfg.data)
    source = (card or {}).get("data", {}).get("source")
    if source and source != "demo corpus":
        return Path(source)
    return None


def run_eval(cfg: EvalConfig) -> EvalResult:
    """Run the eval and, with `out_dir`, write its report (see the module docstring).

    Raises:
        ConfigError: unknown sides or tasks.
        DataError: no held-out example to score.
        NotAvailableError: perplexity asked of a backend without prompt log-probabilities.
    """
    from engine.inference import open_backend
    from engine.inference.hf import HFBackend
    from engine.tokenizer import Hypertokenizer
    from engine.tokenizer.hypertokenizer import MANIFEST
    from engine.training.recipe import load_scenes

    unknown = sorted(set(cfg.tasks) - set(TASKS))
    if unknown:
        raise ConfigError(f"unknown eval task(s): {', '.join(unknown)}",
                          hint=f"one of: {', '.join(TASKS)}")
    started = time.time()
    sides_list = _sides(cfg)
    card, card_dir = _reference_card(cfg)
    profile = trained_profile(cfg.profile, card)
    mode = cfg.mode or (card or {}).get("mode") or profile.training.mode
    hypertokenizer = (Hypertokenizer.load(card_dir) if card_dir is not None and
                      (card_dir / MANIFEST).is_file() else Hypertokenizer.from_profile(profile))
    scenes, bad = load_scenes(_data_path(cfg, card), profile, hypertokenizer)
    notes: list[str] = []
    if bad:
        notes.append(f"{len(bad)} bad scene line(s) skipped")
    samples = held_out(profile, hypertokenizer, scenes, mode)[:cfg.limit]
    if not samples:
        raise DataError("no held-out example to evaluate on",
                        hint="raise training.held_out_fraction or give more documents")
    _emit(cfg, {"event": "log", "message": f"{len(samples)} held-out examples ({mode}); sides: "
                                           + ", ".join(s.name for s in sides_list)})
    backend = HFBackend.from_profile(profile) if cfg.backend == "hf" else \
        open_backend(profile, cfg.backend)
    records: list[EvalRecord] = []
    extra: dict[str, Any] = {"notes": notes}
    try:
        sides = Sides(backend, sides_list)
        ensure_vocabulary(backend, hypertokenizer)  # a base-only eval: rows as training starts
        probe = sides.check_distinct(list(samples[0].input_ids[:64]))
        extra["probe"] = probe
        decode = _decoder(hypertokenizer)
        if "loss" in cfg.tasks:
            records += loss_metric.loss_records(
                sides, samples, decode, on_progress=_progress(cfg, "loss"))
        if "text" in cfg.tasks:
            plain = held_out(profile, hypertokenizer, scenes, "plain")[:cfg.limit]
            records += loss_metric.loss_records(sides, plain, decode, task="text",
                                                on_progress=_progress(cfg, "text"))
        if "reverse" in cfg.tasks:
            records += _reverse(cfg, sides, profile, hypertokenizer, scenes, mode, extra)
        records += _scene_tasks(cfg, scenes, hypertokenizer, extra)
        records += _test_tasks(cfg, sides, backend, profile, extra)
    finally:
        backend.close()
    records += _judges(cfg, records, sides_list, extra)
    metrics = build_metrics(records, sides_list, cfg, profile, extra)
    metrics["seconds"] = round(time.time() - started, 1)
    metrics["mode"] = mode
    metrics["backend"] = cfg.backend
    if card:
        metrics["curves"] = _curves(cfg)
    result = EvalResult(metrics, records)
    if cfg.out_dir is not None:
        from engine.evals.report import write_report

        result.paths = write_report(Path(cfg.out_dir), metrics, records)
    return result


def _decoder(hypertokenizer: Any) -> Callable[[list[int]], str]:
    tokenizer = hypertokenizer.hf

    def decode(ids: list[int]) -> str:
        return str(tokenizer.decode(ids, skip_special_tokens=False))
    return decode


def _progress(cfg: EvalConfig, task: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        if done == total or done % max(1, total // 20) == 0:
            _emit(cfg, {"event": "progress", "task": task, "done": done, "total": total})
    return report


def _reverse(cfg: EvalConfig, sides: Sides, profile: Any, hypertokenizer: Any,
             scenes: list[Any], mode: str, extra: dict[str, Any]) -> list[EvalRecord]:
    bridge = held_out(profile, hypertokenizer, scenes, "bridge")
    texts = {scene.id: scene.text for scene in scenes}
    path = cfg.reverse_path
    if path not in reversibility.PATHS:
        raise ConfigError(f"unknown reversibility path {path!r}",
                          hint=f"one of: {', '.join(reversibility.PATHS)}")
    extra["sacrebleu"] = {"signature": reversibility.signature(), "path": path,
                          "trained_mode": mode}
    if mode != "bridge":
        extra["notes"].append(f"reversibility uses adapters trained in {mode} mode: the way "
                              "back is their answer to the bridge prompt")
    return reversibility.reverse_records(sides, bridge, texts, path=path,
                                         limit=cfg.reverse_limit,
                                         on_progress=_progress(cfg, "reverse"))


def _scene_tasks(cfg: EvalConfig, scenes: list[Any], hypertokenizer: Any,
                 extra: dict[str, Any]) -> list[EvalRecord]:
    out: list[EvalRecord] = []
    from engine.evals.density import leaf_scenes

    # The scenes training learns from (no container repeats its children's text), at most 500.
    leaves = leaf_scenes(scenes)[:500]
    if "density" in cfg.tasks:
        from engine.evals.density import aggregate_density, density_records

        def count(text: str) -> int:
            return len(hypertokenizer.encode_text(text))
        density = density_records(leaves, count)
        extra["density"] = aggregate_density(density)
        out += density
    if "roundtrip" in cfg.tasks:
        from engine.evals.roundtrip import round_trip

        extra["tokenizer"] = round_trip(hypertokenizer, [s.text for s in leaves[:200]])
    if "assoc" in cfg.tasks:
        from engine.evals.associativity import aggregate_associativity, associativity_records

        assoc = associativity_records(leaves, None, k=5, tmp_dir=cfg.work_dir)
        extra["associativity"] = aggregate_associativity(assoc, 5)
        out += assoc
    return out


def _test_tasks(cfg: EvalConfig, sides: Sides, backend: Any, profile: Any,
                extra: dict[str, Any]) -> list[EvalRecord]:
    if cfg.tests is None or not ({"test", "register"} & set(cfg.tasks)):
        return []
    from engine.evals.registers import classifier_for
    from engine.evals.testsets import read_tests, run_tests
    from engine.inference.base import GenerationRequest

    errors: list[Any] = []
    cases = read_tests(cfg.tests, errors)
    if errors:
        extra["notes"].append(f"{cfg.tests}: {len(errors)} bad test line(s) skipped: "
                              + "; ".join(str(e) for e in errors[:3]))
    classify = classifier_for(profile) if "register" in cfg.tasks else None
    if classify is not None:
        extra["register_classifier"] = getattr(classify, "name", type(classify).__name__)
    out: list[EvalRecord] = []
    for name in sides.names:
        sides.use(name)

        def generate(case: Any) -> str:
            request = GenerationRequest(messages=[{"role": "user", "content": case.prompt}],
                                        max_tokens=96, temperature=0.0, seed=cfg.seed)
            return str(backend.generate(request).text)
        out += run_tests(cases, generate, name, sides.sha256(name), classify)
        _emit(cfg, {"event": "progress", "task": "test", "side": name, "done": len(cases),
                    "total": len(cases)})
    return out


def _judges(cfg: EvalConfig, records: list[EvalRecord], sides: list[Side],
            extra: dict[str, Any]) -> list[EvalRecord]:
    """The automatic judge on reference-vs-other pairs, and people's ratings (after the
    scored model is freed: the judge may be a bigger one)."""
    from engine.evals import judging

    out: list[EvalRecord] = []
    if cfg.judge:
        names = [side.name for side in sides]
        reference = cfg.vs if cfg.vs in names else names[0]
        from engine.paths import dirs

        # Shared by every eval: the same question to the same judge is asked once.
        judge = judging.open_judge(cfg.judge, dirs().cache / "judge")
        try:
            summaries = []
            for side in sides:
                if side.name == reference or side.kind == "checkpoint":
                    continue
                mine = judging.judge_records(judge, records, reference, side.name,
                                             cfg.judge_limit)
                _emit(cfg, {"event": "progress", "task": "judge", "done": len(mine),
                            "total": len(mine)})
                if mine:
                    from engine.evals.judge import summarise_judge

                    summaries.append(summarise_judge(mine))
                out += mine
            extra["judge"] = summaries[0] if len(summaries) == 1 else \
                {"judge": cfg.judge, "pairs": summaries}
        finally:
            judge.backend.close()
    if cfg.ratings is not None:
        rated, summary = judging.people(Path(cfg.ratings), seed=cfg.seed,
                                        n_resamples=min(cfg.n_resamples, 1000))
        out += rated
        extra["people"] = {k: v for k, v in summary.items() if k != "ranking"}
        extra["ranking"] = summary["ranking"] or None
    return out


def _curves(cfg: EvalConfig) -> dict[str, Any]:
    curves = {}
    for name, directory in cfg.adapters:
        metrics_file = Path(directory).parent / "metrics.jsonl"
        if not metrics_file.is_file():
            continue
        train, evals = [], []
        for line in metrics_file.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "step":
                train.append([event["step"], event["loss"]])
            elif event.get("event") == "eval" and event.get("eval_loss") is not None:
                evals.append([event["step"], event["eval_loss"]])
        curves[name] = {"train": train, "eval": evals}
    return curves


# --- aggregates and differences ------------------------------------------------------------

def side_metrics(records: list[EvalRecord], side: str) -> dict[str, float | None]:
    """Every metric of one side, recomputed from its records."""
    mine = [r for r in records if r.side == side]
    out: dict[str, float | None] = {}
    loss = [r for r in mine if r.task == "loss"]
    if loss:
        for key, value in loss_metric.aggregate_loss(loss).items():
            out[f"loss.{key}"] = value
    if any(r.task == "text" for r in mine):
        out["text.ppl"] = loss_metric.aggregate_loss(mine, task="text")["ppl"]
    reverse = [r for r in mine if r.task == "reverse"]
    if reverse:
        for key, value in reversibility.aggregate_reverse(reverse).items():
            out[f"reverse.{key}"] = value
    for task, key, value_key in (("register", "register.agree", "agree"),
                                 ("test", "test.pass", "passed")):
        values = [r.values.get(value_key) for r in mine if r.task == task]
        answered = [v for v in values if v is not None]
        if values:
            out[key] = sum(answered) / len(answered) if answered else None
    return out


def differences(records: list[EvalRecord], a: str, b: str, *, seed: int = 0,
                n_resamples: int = 2000) -> list[dict[str, Any]]:
    """Every paired difference b − a the records allow, as plain data."""
    out = []
    common = {"a": a, "b": b, "seed": seed, "n_resamples": n_resamples}
    for task, metric, num, den, transform in (
            ("loss", "loss.ppl", "nll", "tokens", math.exp),
            ("loss", "loss.bpb", "nll", "bytes", lambda x: x / math.log(2)),
            ("loss", "loss.seq_ppl", "seq_nll", "seq_tokens", math.exp),
            ("text", "text.ppl", "nll", "tokens", math.exp)):
        pairs = paired(records, task, a, b)
        if len(pairs) < 2:
            continue
        out.append(stats.paired_ratio(
            metric, [x.values[num] for x, _ in pairs], [x.values[den] for x, _ in pairs],
            [y.values[num] for _, y in pairs], [y.values[den] for _, y in pairs],
            better="lower", transform=transform, **common).to_dict())
    pairs = paired(records, "reverse", a, b)
    if len(pairs) >= 2:
        out.append(stats.paired_corpus(
            "reverse.chrf", np.asarray([x.values["chrf_stats"] for x, _ in pairs]),
            np.asarray([y.values["chrf_stats"] for _, y in pairs]),
            reversibility.chrf_of_sums, better="higher", **common).to_dict())
        out.append(stats.mcnemar_exact(
            "reverse.exact", [x.values["exact"] for x, _ in pairs],
            [y.values["exact"] for _, y in pairs], **common).to_dict())
    for task, metric, key in (("register", "register.agree", "agree"),
                              ("test", "test.pass", "passed")):
        pairs = [(x, y) for x, y in paired(records, task, a, b)]
        answered = [(x, y) for x, y in pairs
                    if x.values.get(key) is not None and y.values.get(key) is not None]
        if len(answered) >= 2:
            diff = stats.mcnemar_exact(metric, [x.values[key] for x, _ in answered],
                                       [y.values[key] for _, y in answered], **common).to_dict()
            diff["n_failed"] = len(pairs) - len(answered)
            out.append(diff)
    return out


def build_metrics(records: list[EvalRecord], sides: list[Side], cfg: EvalConfig, profile: Any,
                  extra: dict[str, Any]) -> dict[str, Any]:
    """metrics.json: per side metrics, the comparisons, and what the run was."""
    names = [side.name for side in sides]
    reference = cfg.vs if cfg.vs in names else names[0]
    comparisons: list[dict[str, Any]] = []
    sweep = [side for side in sides if side.kind == "checkpoint"]
    # Adapters before the base: against a reference adapter, the other adapter is the question.
    for side in sorted(sides, key=lambda side: side.kind == "base"):
        if side.name == reference or side.kind == "checkpoint":
            continue
        comparisons += differences(records, reference, side.name, seed=cfg.seed,
                                   n_resamples=cfg.n_resamples)
    if cfg.judge:
        from engine.evals.judging import judge_difference

        for side in sides:
            if side.name != reference and side.kind != "checkpoint":
                found = judge_difference(records, reference, side.name, seed=cfg.seed,
                                         n_resamples=cfg.n_resamples)
                if found and "error" not in found:
                    comparisons.append(found)
                elif found:
                    extra.setdefault("notes", []).append(f"judge: {found['error']}")
    if sweep and BASE in names:
        comparisons += differences(records, BASE, sweep[-1].name, seed=cfg.seed,
                                   n_resamples=cfg.n_resamples)
    per_side = {name: side_metrics(records, name) for name in names}
    # Density and associativity measure the scenes and the memory, not a model: one column each.
    density, assoc = extra.get("density"), extra.get("associativity")
    if density:
        per_side["scenes"] = {f"density.{key}": density.get(key)
                              for key in ("units_per_100", "structure_ratio", "n")
                              if key in density}
    if assoc:
        per_side["memory"] = {f"assoc.{key}": value for key, value in assoc.items()
                              if key != "k"}
    return {
        "schema": EVAL_SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "profile": getattr(profile, "name", str(profile)), "seed": cfg.seed,
        "n_resamples": cfg.n_resamples, "vs": reference,
        "sides": [side.to_dict() for side in sides],
        "metrics": per_side,
        "metric_info": METRIC_INFO,
        "differences": comparisons,
        "sweep": [{"side": s.name, "step": s.step, "metrics": per_side[s.name]} for s in sweep],
        "examples": {task: len(by_side(records, task).get(names[0], {})) for task in TASKS},
        **{key: value for key, value in extra.items() if key != "notes"},
        "notes": extra.get("notes", []),
    }
