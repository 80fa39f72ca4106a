"""The demo pipeline (``pyquant demo`` / ``make demo``): the whole evaluation of one model.

Steps: load the model (default: the bundled SmolLM2-135M) -> collect a reference on the
built-in prompts -> for the full-precision model and each quantized variant (RTN on a fresh
copy; a ``-gptq`` variant such as ``int4-g128-gptq`` uses GPTQ calibrated on the built-in
calibration text): compare against the reference, perplexity on the built-in text, the built-in
multiple-choice tasks (flips against the full-precision model's answers), benchmark -> the
trade-off report (HTML + Markdown + PNGs) -> print the summary.

Files in the output directory: ``reference.pqref``, ``{variant}.{compare,perplexity,tasks,bench}.json``
(pyquant results files), ``report.html``, ``report.md``, ``report_*.png`` and ``demo-config.json``.
Resumable: a results file that is already there and complete is reused, and the reference
store resumes from its checkpoint; a directory made with other settings is refused rather than
mixed.
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import json
import os
import shutil
import time
from typing import Callable, Optional

from . import data
from .results import changed_settings, make_results, read_results, write_results

REFERENCE_VARIANT = "fp32"
DEFAULT_VARIANTS = ("int8", "int4-g128", "int4-g128-gptq", "int4-g32")
GPTQ_SUFFIX = "-gptq"  # a variant "<scheme>-gptq": the scheme quantized with GPTQ instead of RTN


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run (tokens unless said otherwise)."""

    prompts: Optional[int]  # how many built-in prompts (None: all)
    max_new_tokens: int
    top_n: int
    ppl_words: Optional[int]  # words of the built-in text (None: all)
    ppl_context: int
    task_items: Optional[int]  # how many built-in task items (None: all)
    bench_batch_sizes: tuple
    bench_prompt_len: int
    bench_gen_len: int
    bench_requests: int
    bench_warmup: int
    bench_peak_memory: bool  # isolated worker process per setting (peak RSS)
    gptq_windows: int  # GPTQ variants: calibration windows of gptq_len tokens from the built-in text
    gptq_len: int


FULL = DemoSettings(prompts=None, max_new_tokens=96, top_n=16, ppl_words=None, ppl_context=512, task_items=None,
                    bench_batch_sizes=(1, 8), bench_prompt_len=128, bench_gen_len=32, bench_requests=5,
                    bench_warmup=1, bench_peak_memory=True, gptq_windows=32, gptq_len=512)
QUICK = DemoSettings(prompts=4, max_new_tokens=8, top_n=16, ppl_words=60, ppl_context=64, task_items=6,
                     bench_batch_sizes=(1, 2), bench_prompt_len=16, bench_gen_len=4, bench_requests=2,
                     bench_warmup=0, bench_peak_memory=False, gptq_windows=2, gptq_len=64)


class _Log:
    """Progress lines with the elapsed wall time and this process's CPU time (all threads; on a
    busy shared machine, CPU time / cores estimates the wall time of an idle one)."""

    def __init__(self, out: Callable[[str], None]):
        self.t0 = time.perf_counter()
        self.c0 = time.process_time()
        self.out = out

    def __call__(self, msg: str) -> None:
        self.out(f"[{time.perf_counter() - self.t0:7.1f}s, cpu {time.process_time() - self.c0:7.1f}s] {msg}")


def _bar(desc: str, total: Optional[int], unit: str):
    """A tqdm bar and a ``progress(items, tokens)`` callback that advances it and shows tokens/s."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, leave=False)
    state = {"tokens": 0, "t0": time.perf_counter()}

    def cb(items: int, tokens: int) -> None:
        state["tokens"] += tokens
        bar.update(items)
        dt = time.perf_counter() - state["t0"]
        if dt > 0:
            bar.set_postfix_str(f"{state['tokens'] / dt:.0f} tok/s")

    return bar, cb


def _reusable(path: str) -> bool:
    if not os.path.isfile(path):
        return False
    try:
        return bool(read_results(path).get("complete"))
    except ValueError:
        return False


# Settings of steps added to the demo later: a directory made before them lacks these keys, and
# its other results stay valid (the new steps just run).
_LATER_SETTINGS = ("task_items", "gptq_windows", "gptq_len")


def _gains_steps_only(path: str, config: dict) -> bool:
    """Whether the config saved at ``path`` differs from ``config`` only by missing _LATER_SETTINGS."""
    with open(path) as f:
        old = json.load(f)
    new = json.loads(json.dumps(config))
    added = {k: new["settings"][k] for k in _LATER_SETTINGS if k not in old.get("settings", {})}
    return bool(added) and {**old, "settings": {**old.get("settings", {}), **added}} == new


def _check_config(out_dir: str, config: dict) -> None:
    """Refuse an output directory that holds a demo run made with other settings (one made before
    a step was added to the demo is accepted: the new step runs, the rest is reused)."""
    path = os.path.join(out_dir, "demo-config.json")
    diff = changed_settings(path, config)
    if diff == ["settings"] and _gains_steps_only(path, config):
        diff = None
    if diff is None:
        with open(path, "w") as f:
            json.dump(config, f, indent=1)
    elif diff:
        raise ValueError(f"{out_dir} holds a demo run made with other settings ({', '.join(diff)} differ): "
                         "use another --output-dir or delete it")


def _texts(settings: DemoSettings) -> list:
    with open(data.perplexity_text_path(), encoding="utf-8") as f:
        text = f.read()
    if settings.ppl_words is not None:
        text = " ".join(text.split()[: settings.ppl_words])
    return [text]


def _canonical_variant(v: str) -> str:
    """``v`` with its scheme spelled canonically ("fp32", "<scheme>" or "<scheme>-gptq"); ValueError if bad."""
    from .formats import QuantSpec

    if v == REFERENCE_VARIANT:
        return v
    gptq = isinstance(v, str) and v.endswith(GPTQ_SUFFIX)
    return str(QuantSpec.parse(v[: -len(GPTQ_SUFFIX)] if gptq else v)) + (GPTQ_SUFFIX if gptq else "")


def _quantize_variant(model, tokenizer, variant: str, settings: DemoSettings, log):
    """A fresh copy of ``model`` quantized as ``variant`` (lm_head kept in full precision)."""
    import pyquant as pq

    if not variant.endswith(GPTQ_SUFFIX):
        log(f"{variant}: quantizing a fresh copy of the model (RTN, lm_head kept full precision)")
        return pq.quantize_model(copy.deepcopy(model), variant)
    from .quant.gptq import calibration_ids

    calib = calibration_ids(tokenizer, seq_len=settings.gptq_len, sequences=settings.gptq_windows)
    log(f"{variant}: quantizing a fresh copy of the model (GPTQ on {len(calib)} windows of {settings.gptq_len} "
        "tokens of the built-in calibration text, lm_head kept full precision)")
    return pq.quantize_model(copy.deepcopy(model), variant[: -len(GPTQ_SUFFIX)], method="gptq", calibration=calib,
                             progress=True)


def _model_info(model, tokenizer, spec_name: str, variant: str) -> dict:
    from .models import model_info

    return {**model_info(model, tokenizer, name=spec_name), "variant": variant}


def run_demo(output_dir: str = "demo-output", quick: bool = False, model: str = "demo",
             variants=DEFAULT_VARIANTS, max_kl: Optional[float] = None, threads: Optional[int] = None,
             out: Callable[[str], None] = print) -> dict:
    """Run the whole demo; returns {"output_dir", "report" (HTML path), "results" [paths],
    "wall_s" (seconds)}.

    model: "demo" (bundled SmolLM2-135M), an HF directory or a .gguf file. variants: quantization
    schemes (QuantSpec strings; "<scheme>-gptq" for GPTQ) compared with the full-precision model.
    quick: tiny sizes (for tests). threads: torch CPU threads for the whole run (None: torch's default); on a machine
    shared with other busy processes, 1 thread avoids OpenMP barrier stalls that can make each
    op many times slower. Raises ValueError on bad variants, bad threads or an output directory
    made with other settings.
    """
    from .report.build import DEFAULT_MAX_KL

    max_kl = DEFAULT_MAX_KL if max_kl is None else max_kl
    variants = tuple(_canonical_variant(v) for v in variants)
    if len(set(variants)) != len(variants):
        raise ValueError(f"duplicate variants in {variants}")
    settings = QUICK if quick else FULL
    import torch

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or old_threads)
    try:
        return _run(output_dir, quick, model, variants, max_kl, settings, out)
    finally:
        torch.set_num_threads(old_threads)


def _run(output_dir, quick, model, variants, max_kl, settings, out) -> dict:
    import torch

    import pyquant as pq

    from .eval.prompts import read_prompts
    from .eval.store import ReferenceStore
    from .eval.tasks import TaskResult, evaluate_tasks, read_tasks
    from .report.build import format_table_text, write_report

    log = _Log(out)
    os.makedirs(output_dir, exist_ok=True)
    _check_config(output_dir, {"model": str(model), "quick": bool(quick), "settings": dataclasses.asdict(settings)})
    results: list = []
    log(f"demo: model {model!r}, variants {', '.join((REFERENCE_VARIANT,) + variants)}, "
        f"{'quick' if quick else 'full'} sizes, {torch.get_num_threads()} torch threads, output in {output_dir}/")
    log("loading the model (the first run converts the GGUF file and caches it)")
    ref_model, tok = pq.load_model(model)
    n_params = sum(p.numel() for p in ref_model.parameters())
    log(f"loaded {type(ref_model).__name__} ({n_params / 1e6:.1f} M parameters)")

    # -- reference ------------------------------------------------------------------------------
    store_path = os.path.join(output_dir, "reference.pqref")
    prompts = read_prompts(data.prompts_path())[: settings.prompts]
    if os.path.isfile(store_path):
        store = ReferenceStore.load(store_path)
        log(f"reusing {store_path} ({len(store)} sequences)")
    else:
        log(f"collecting the reference on {len(prompts)} built-in prompts, {settings.max_new_tokens} new tokens each")
        bar, cb = _bar("reference", len(prompts), "seq")
        with bar:
            store = pq.collect_reference(ref_model, tok, prompts, max_new_tokens=settings.max_new_tokens,
                                         top_n=settings.top_n, output=store_path, progress=cb)
        log(f"reference: {len(store)} sequences, {store.num_rows} scored positions, "
            f"{store.bytes_per_token:.1f} bytes/token -> {store_path}")
    texts = _texts(settings)
    task_items = read_tasks(data.tasks_path())[: settings.task_items]
    base_tasks = None  # the full-precision model's answers: the baseline of every variant's flips

    # -- each variant -----------------------------------------------------------------------------
    for variant in (REFERENCE_VARIANT,) + variants:
        paths = {k: os.path.join(output_dir, f"{variant}.{k}.json") for k in ("compare", "perplexity", "tasks", "bench")}
        todo = {k: p for k, p in paths.items() if not _reusable(p)}
        if variant == REFERENCE_VARIANT and "tasks" not in todo:
            base_tasks = TaskResult.from_dict(read_results(paths["tasks"])["data"])
        for k, p in paths.items():
            if k not in todo:
                log(f"{variant}: reusing {p}")
                results.append(p)
        if not todo:
            continue
        if variant == REFERENCE_VARIANT:
            m = ref_model
        else:
            m = _quantize_variant(ref_model, tok, variant, settings, log)
        minfo = _model_info(m, tok, str(model), variant)
        if "compare" in todo:
            log(f"{variant}: compare against the reference ({store.num_rows} positions)")
            bar, cb = _bar(f"compare {variant}", len(store), "seq")
            with bar:
                r = pq.compare(m, store, tokenizer=tok, progress=cb)
            d = r.to_dict(per_token=True)
            write_results(todo["compare"], make_results("compare", d, variant=variant, model=minfo))
            results.append(todo["compare"])
            s = d["stats"]["all"]
            log(f"{variant}: mean KL {s['kl_mean']:.5f}, top-1 agree {100 * s['top1_agree']:.2f}%")
        if "perplexity" in todo:
            log(f"{variant}: perplexity on the built-in text (rolling windows of {settings.ppl_context} tokens)")
            bar, cb = _bar(f"perplexity {variant}", None, "win")
            with bar:
                r = pq.perplexity(m, tok, texts, context=settings.ppl_context, mode="rolling", progress=cb)
            write_results(todo["perplexity"], make_results("perplexity", r.to_dict(), variant=variant, model=minfo))
            results.append(todo["perplexity"])
            log(f"{variant}: token perplexity {r.token_perplexity:.3f}, bits/byte {r.bits_per_byte:.4f}")
        if "tasks" in todo:
            log(f"{variant}: {len(task_items)} built-in multiple-choice task items")
            bar, cb = _bar(f"tasks {variant}", len(task_items), "item")
            with bar:
                r = evaluate_tasks(m, tok, task_items, checkpoint=todo["tasks"] + ".partial", progress=cb)
            if base_tasks is None:
                base_tasks = r
            else:
                r.compare_with(base_tasks, label=REFERENCE_VARIANT,
                               path=os.path.join(output_dir, f"{REFERENCE_VARIANT}.tasks.json"))
            write_results(todo["tasks"], make_results("tasks", r.to_dict(), variant=variant, model=minfo))
            shutil.rmtree(todo["tasks"] + ".partial", ignore_errors=True)
            results.append(todo["tasks"])
            a = r.summary()["all"]
            flips = (r.flips or {}).get("acc", {}).get("all")
            log(f"{variant}: task accuracy {100 * a['acc']:.2f}%"
                + (f", {flips['flips']} flips vs {REFERENCE_VARIANT} ({flips['correct_to_wrong']} right->wrong)" if flips else ""))
        if "bench" in todo:
            log(f"{variant}: benchmark, batch sizes {settings.bench_batch_sizes}, prompt {settings.bench_prompt_len} "
                f"+ {settings.bench_gen_len} generated tokens, {settings.bench_requests} timed requests each")
            r = pq.benchmark(m, tok, batch_sizes=settings.bench_batch_sizes, prompt_len=settings.bench_prompt_len,
                             gen_len=settings.bench_gen_len, requests=settings.bench_requests,
                             warmup=settings.bench_warmup, peak_memory=settings.bench_peak_memory)
            write_results(todo["bench"], r.to_results(variant=variant, model=minfo))
            results.append(todo["bench"])
            s0 = next((s for s in r.settings if s.get("status") == "ok"), None)
            if s0:
                log(f"{variant}: TPOT P50 {1e3 * s0['tpot_s']['p50']:.1f} ms at batch {s0['batch']}, "
                    f"weights {r.memory['weights']['total'] / 2**20:.1f} MiB")
        if m is not ref_model:
            del m
            gc.collect()

    # -- report -----------------------------------------------------------------------------------
    log("writing the report")
    rep = write_report(results, os.path.join(output_dir, "report.html"), max_kl=max_kl,
                       title=f"pyquant demo: {model if model != 'demo' else 'SmolLM2-135M-Instruct'}")
    r = rep["report"]
    out("")
    for t in r.tables:
        out(t.title)
        out(format_table_text(t))
        out("")
    for _, vd, s in r.verdict_lines:
        out(f"{vd.upper():<10} {s}")
    out(r.summary)
    if r.knee_line:
        out(r.knee_line)
    out("")
    wall = time.perf_counter() - log.t0
    out(f"report: {os.path.abspath(rep['html'])}  (Markdown twin: report.md, figures: report_*.png)")
    out(f"demo finished in {wall:.0f} s wall ({time.process_time() - log.c0:.0f} s CPU)")
    return {"output_dir": output_dir, "report": rep["html"], "results": results, "wall_s": wall}
