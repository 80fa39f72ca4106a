"""``pq.benchmark``: latency percentiles, throughput and memory of one model over a batch sweep.

For each batch size: ``warmup`` untimed requests, then ``requests`` timed ones (latency.py),
each prefilling ``prompt_len`` random non-special tokens (fixed seed: identical for every
variant) and decoding to ``gen_len`` output tokens. Statistics (stats.py) of TTFT, TPOT (every
decode step of every timed request) and end-to-end latency; prefill and decode tokens/s; KV
cache bytes; peak memory (memory.py). An out-of-memory at one batch size is recorded for that
setting and the sweep goes on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import tempfile

import torch

from .. import ops
from ..results import machine_facts, make_results
from .latency import allowed_token_ids, prompt_ids, run_request
from .memory import cuda_memory, disk_bytes, kv_cache_bytes, peak_rss_worker, saved_bytes, weight_bytes
from .stats import summarize
from .sweep import batch_sweep
from .timing import DeviceClock, cuda_profiler_range

_WARMUP_REQUEST_BASE = 1_000_000  # warm-up prompts never coincide with timed ones


@dataclasses.dataclass
class BenchmarkResult:
    """What ``benchmark`` measured. Times in seconds, memory in bytes, throughput in tokens/s."""

    config: dict
    settings: list
    sweep: dict
    memory: dict
    machine: dict
    profile: dict

    def to_dict(self) -> dict:
        """Plain-JSON dict: {"config", "settings", "sweep", "memory", "machine", "profile"}."""
        return dataclasses.asdict(self)

    def to_results(self, variant: str = "", model: dict | None = None) -> dict:
        """A versioned results object (pyquant.results.make_results kind "bench"). The run finished,
        so it is complete; settings that failed (out of memory) carry status "error" and are
        counted in data["failed_settings"]."""
        data = {k: v for k, v in self.to_dict().items() if k != "machine"}
        data["failed_settings"] = sum(s["status"] != "ok" for s in self.settings)
        return make_results("bench", data, variant=variant, model=model, machine=self.machine, complete=True)

    def table(self) -> str:
        """The human-readable tables (per-setting latency/throughput/memory, batch sweep)."""
        from .table import format_tables

        return format_tables(self.to_dict())


def check_options(batch_sizes, prompt_len: int, gen_len: int, requests: int, warmup: int,
                  device=None, threads=None) -> tuple:
    """Validate benchmark options that need no model; returns sorted unique batch sizes.

    ValueError naming the problem: non-positive batch size/lengths, zero requests, negative
    warm-up, unknown device, CUDA requested without CUDA, threads < 1.
    """
    try:
        bs = sorted({int(b) for b in batch_sizes})
    except (TypeError, ValueError):
        raise ValueError(f"batch sizes must be integers, got {batch_sizes!r}") from None
    if not bs or bs[0] < 1:
        raise ValueError(f"batch sizes must be >= 1, got {list(batch_sizes)!r}")
    for name, v, lo in (("prompt_len", prompt_len, 1), ("gen_len", gen_len, 1), ("requests", requests, 1),
                        ("warmup", warmup, 0)):
        if int(v) != v or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if threads is not None and (int(threads) != threads or threads < 1):
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    if device is not None:
        dev = str(device).split(":")[0]
        if dev not in ("cpu", "cuda"):
            raise ValueError(f"unknown device {str(device)!r}: use cpu or cuda")
        if dev == "cuda" and not torch.cuda.is_available():
            raise ValueError("device cuda requested but CUDA is not available (torch.cuda.is_available() is False)")
    return tuple(bs)


def check_context(model, prompt_len: int, gen_len: int) -> int:
    """ValueError if prompt_len + gen_len exceeds the model's context (config.max_position_embeddings).

    Returns the context length (or -1 when the config does not state one)."""
    ctx = getattr(model.config, "max_position_embeddings", None)
    if ctx is not None and prompt_len + gen_len > ctx:
        raise ValueError(f"prompt_len + gen_len = {prompt_len} + {gen_len} = {prompt_len + gen_len} exceeds the "
                         f"model's context of {ctx} tokens (config.max_position_embeddings)")
    return -1 if ctx is None else int(ctx)


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def _model_dtype(model) -> torch.dtype:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


@contextlib.contextmanager
def _profiled(enabled: bool, device: torch.device, trace_path: str | None, record: dict):
    """CUDA: cudaProfilerStart/Stop around the region. CPU: a torch.profiler chrome trace."""
    if not enabled:
        yield
    elif device.type == "cuda":
        with cuda_profiler_range(True):
            yield
        record["cuda_profiler_api"] = True
    else:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            yield
        os.makedirs(os.path.dirname(os.path.abspath(trace_path)), exist_ok=True)
        prof.export_chrome_trace(trace_path)
        if not os.path.isfile(trace_path):  # the exporter logs and returns on failure: say so
            raise OSError(f"could not write the profiler trace {trace_path}")
        record.setdefault("traces", []).append(trace_path)


def _stats(values, what):
    return summarize(values, what) if values else None


def _one_setting(model, allowed, b, prompt_len, gen_len, requests, warmup, seed, device, clock,
                 profile, trace_path, prof_record, bar):
    def ids(i):
        return prompt_ids(allowed, b, prompt_len, seed, i).to(device)

    for w in range(warmup):
        run_request(model, ids(_WARMUP_REQUEST_BASE + w), gen_len, clock)
        bar.update(1)
    timings = []
    record = profile and device.type == "cpu"
    with _profiled(profile, device, trace_path, prof_record):
        for i in range(requests):
            timings.append(run_request(model, ids(i), gen_len, clock, record=record))
            bar.update(1)
    ttft = [t.ttft_s for t in timings]
    steps = [s for t in timings for s in t.decode_step_s]
    e2e = [t.e2e_s for t in timings]
    pre_tok, dec_tok, out_tok = b * prompt_len * requests, b * (gen_len - 1) * requests, b * gen_len * requests
    pre_t, dec_t, e2e_t = sum(ttft), sum(steps), sum(e2e)
    return {
        "batch": b, "status": "ok", "error": None,
        "ttft_s": _stats(ttft, "TTFT"), "tpot_s": _stats(steps, "TPOT"), "e2e_s": _stats(e2e, "end-to-end latency"),
        "prefill_tokens": pre_tok, "prefill_time_s": pre_t, "prefill_tokens_per_s": pre_tok / pre_t,
        "decode_tokens": dec_tok, "decode_time_s": dec_t, "decode_tokens_per_s": dec_tok / dec_t if dec_tok else None,
        "output_tokens": out_tok, "e2e_time_s": e2e_t, "output_tokens_per_s": out_tok / e2e_t,
        "kv_cache_bytes": timings[-1].kv_cache_bytes,
    }


def benchmark(model, tokenizer=None, batch_sizes=(1, 8), prompt_len: int = 512, gen_len: int = 128,
              requests: int = 10, warmup: int = 2, device=None, threads: int | None = None, seed: int = 0,
              profile: bool = False, trace_prefix: str | None = None, peak_memory: bool = True,
              disk: "bool | str" = True, progress: bool = True) -> BenchmarkResult:
    """Measure latency, throughput and memory of ``model`` at each batch size; returns a BenchmarkResult.

    model: a causal LM with the transformers interface (HF, or quantized by pyquant); moved to
    ``device`` ("cpu" | "cuda", default: where the model is). tokenizer: used only to exclude
    special tokens from the random prompts (None: config bos/eos/pad ids are excluded).
    threads: torch CPU threads during the run (restored afterwards). profile: on CUDA wrap each
    timed region in cudaProfilerStart/Stop (for ``nsys --capture-range=cudaProfilerApi``); on
    CPU write a torch.profiler chrome trace per batch size to "{trace_prefix}.b{B}.trace.json".
    peak_memory: on CPU run an isolated worker process per setting for its peak RSS. disk: a
    saved model path to measure, True to save the model to a temporary directory and measure
    it, False to skip. Times in seconds, memory in bytes, throughput in tokens/s.
    """
    from tqdm.auto import tqdm

    bs = check_options(batch_sizes, prompt_len, gen_len, requests, warmup, device, threads)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    ctx = check_context(model, prompt_len, gen_len)
    if profile and device.type == "cpu" and not trace_prefix:
        trace_prefix = os.path.abspath("pyquant-bench")
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        model = model.to(device).eval()
        clock = DeviceClock(device)
        allowed = allowed_token_ids(model, tokenizer)
        dtype = _model_dtype(model)
        memory = {"weights": weight_bytes(model)}
        if disk:
            try:
                memory["disk"] = {"bytes": disk_bytes(disk), "format": "path", "path": disk} if isinstance(disk, str) \
                    else saved_bytes(model)
            except Exception as e:  # noqa: BLE001  (reported, never hidden)
                memory["disk"] = {"error": f"{type(e).__name__}: {e}"}
        config = {"batch_sizes": list(bs), "prompt_len": prompt_len, "gen_len": gen_len, "requests": requests,
                  "warmup": warmup, "device": str(device), "threads": torch.get_num_threads(), "seed": seed,
                  "context": ctx, "dtype": str(dtype).replace("torch.", ""), "vocab_prompt_ids": int(allowed.numel()),
                  "timer": "torch.cuda.synchronize + perf_counter" if device.type == "cuda" else "perf_counter",
                  "tpot": "every decode step of every timed request (inter-token latency)",
                  "percentiles": "linear interpolation (numpy default)"}
        machine = dict(machine_facts(), backend_info=ops.backend_info(), threads=torch.get_num_threads())
        prof_record = {"enabled": bool(profile)}
        settings = []
        with contextlib.ExitStack() as stack:
            worker_dir = None
            if peak_memory and device.type == "cpu":
                worker_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="pyquant-bench-"))
                try:
                    torch.save(model, os.path.join(worker_dir, "model.pt"))
                except Exception as e:  # noqa: BLE001
                    worker_dir, worker_err = None, f"cannot pickle the model for the memory worker: {e}"
            bar = stack.enter_context(tqdm(total=len(bs) * (warmup + requests), desc="bench", unit="req",
                                           disable=not progress))
            for b in bs:
                bar.set_postfix_str(f"batch={b}")
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                trace = f"{trace_prefix}.b{b}.trace.json" if trace_prefix else None
                try:
                    s = _one_setting(model, allowed, b, prompt_len, gen_len, requests, warmup, seed, device,
                                     clock, profile, trace, prof_record, bar)
                except Exception as e:  # noqa: BLE001
                    if not _is_oom(e):
                        raise
                    s = {"batch": b, "status": "error", "error": f"out of memory: {str(e).splitlines()[0][:300]}"}
                if s["status"] != "ok":  # outside the except block: the traceback's tensors are gone
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                s["kv_cache_bytes_formula"] = kv_cache_bytes(model.config, b, prompt_len + gen_len - 1, dtype)
                if device.type == "cuda":
                    s["peak_memory"] = cuda_memory(device)
                elif worker_dir:
                    ids_file = os.path.join(worker_dir, f"ids_b{b}.pt")
                    torch.save(prompt_ids(allowed, b, prompt_len, seed, 0), ids_file)
                    s["peak_memory"] = peak_rss_worker(os.path.join(worker_dir, "model.pt"), ids_file, gen_len,
                                                       torch.get_num_threads())
                elif peak_memory:
                    s["peak_memory"] = {"error": worker_err}
                settings.append(s)
        return BenchmarkResult(config, settings, batch_sweep(settings), memory, machine, prof_record)
    finally:
        torch.set_num_threads(old_threads)
