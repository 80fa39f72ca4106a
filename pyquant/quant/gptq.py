"""GPTQ (Frantar et al., 2023): quantization that corrects each column's rounding error in the
columns not yet quantized, using the layer's input statistics H = sum_t x_t x_t^T.

Same formats and grids as RTN (rtn.py); only the codes (and the grids, which are taken from the
error-corrected weights when each group is reached) differ. Columns are taken left to right, so
groups stay contiguous along K and every kernel runs a GPTQ weight unchanged. Act-order (GPTQ's
``desc_act``, opt-in) takes them by decreasing H diagonal instead: the weight is stored with its
columns in that order, groups contiguous in it, and the QuantLinear gathers x to match
(``in_perm``), the layout act-order GPTQ checkpoints are read into (checkpoints.py). Static
act-order (``act_order="static"``) takes the columns in the same order but keeps the groups
contiguous along K, each group's grid fixed from the weights before any column is quantized
(AutoGPTQ's static_groups): the weight keeps its layout, no gather. An INT8 layer (one grid per
row) always gets that layout: its codes are the same either way.

``gptq_quantize_weight`` quantizes one weight given its H. ``gptq_quantize_layers`` walks a
model: decoder layers one at a time (the inputs of layer i come from layers 0..i-1 already
quantized, as in the reference implementation), then any planned linear outside them in one
final pass. ``calibration_ids`` cuts text into token windows.

Attention-aware value projections. What a value projection's error costs is its error after the
attention mixes positions: head h outputs sum_j A_h[i, j] v_j, so the error of W_v's rows for KV
head g is measured exactly by H_g = sum_{h reads g} (A_h X)^T (A_h X), not by X^T X. The two differ
most at attention sinks: the first position of a window is one token in 512 of X^T X but takes up
to 60% of the attention in SmolLM2-135M's later layers, and plain GPTQ trades its accuracy away
(int4-g128 KL on the demo reference: RTN 0.330, plain GPTQ 0.457, GPTQ with H_g 0.200; see
bench/RESULTS.md). The walk therefore runs attention eagerly to read A and quantizes each
KV head's rows of v_proj with its own H_g (``gptq_quantize_weight`` with a [G, K, K] hessian).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..formats import QuantizedWeight, QuantSpec
from .linear import unpermute_columns
from .rtn import check_weight, int4_grid, int4_group_grid, int8_scales, pack_codes, to_codes

DEFAULT_DAMP = 0.01
DEFAULT_BLOCK = 128


def gptq_quantize_weight(w: torch.Tensor, hessian: torch.Tensor, spec: "QuantSpec | str",
                         damp: float = DEFAULT_DAMP, block_size: int = DEFAULT_BLOCK,
                         perm: Optional[torch.Tensor] = None, static_groups: bool = False) -> QuantizedWeight:
    """GPTQ quantization of w [N, K] into ``spec``'s format, given hessian [K, K] = sum_t x_t x_t^T over
    the layer's calibration inputs (any positive multiple of it gives the same result), or
    [G, K, K]: one per block of N / G consecutive rows (the KV heads of a value projection).

    damp: fraction of the mean diagonal added to the diagonal (numerical stability). Columns no
    input ever reached (H_kk = 0) are set to zero. INT8 scales come from the original rows (absmax
    / 127); an INT4 group's scale and zero-point from its error-corrected weights when the first
    column of the group is reached. Columns are processed in blocks of ``block_size`` (rounded up
    to a multiple of the group size) with lazy updates of the rest. With a diagonal H the result is
    exactly RTN's. Works in float64 for a float64 w, else in float32. Returns a QuantizedWeight.

    perm: quantize the columns in this order (act-order: ``act_order_perm(hessian)``). The result
    is then the weight of ``w[:, perm]``, groups contiguous in that order: a QuantLinear runs it
    with ``in_perm=perm``. With ``static_groups`` the groups stay w's own, each one's grid fixed
    from w before any column is quantized (AutoGPTQ's static_groups, compressed-tensors' actorder
    "weight"), and the result is in w's column order: no in_perm, no gather at run time. INT8 (one
    grid per row, taken from w) gives the same codes either way.
    """
    spec = QuantSpec.parse(spec)
    check_weight(w, "gptq_quantize_weight")
    n, k = w.shape
    shape = tuple(getattr(hessian, "shape", ()))
    if not isinstance(hessian, torch.Tensor) or shape[-2:] != (k, k) or len(shape) not in (2, 3) \
            or (len(shape) == 3 and (shape[0] < 1 or n % shape[0])):
        raise ValueError(f"gptq_quantize_weight: hessian must be [{k}, {k}] (or [G, {k}, {k}] with G dividing "
                         f"N={n}) for a weight [{n}, {k}], got {shape or type(hessian)}")
    if not torch.isfinite(hessian).all():
        raise ValueError("gptq_quantize_weight: the hessian contains NaN or Inf")
    _check_options(damp, block_size)
    hs = hessian if hessian.dim() == 3 else hessian[None]
    w = w.detach()
    if perm is not None:
        perm = torch.as_tensor(perm, device=hs.device).long().reshape(-1)
        if perm.numel() != k or not torch.equal(perm.sort().values, torch.arange(k, device=perm.device)):
            raise ValueError(f"gptq_quantize_weight: perm must be a permutation of the {k} columns")
        w, hs = w[:, perm.to(w.device)], _permuted(hs, perm)
    return _gptq_rows(w.to(_work_dtype(w)), [inverse_factor(h, damp) for h in hs], spec, block_size,
                      perm if static_groups else None)


def act_order_perm(hessian: torch.Tensor) -> torch.Tensor:
    """GPTQ's act-order: the columns by decreasing H diagonal (the summed diagonals of a [G, K, K]
    hessian), ties in column order. The columns whose inputs carry the most energy are quantized
    first, while the most columns are left to absorb their error."""
    d = torch.diagonal(hessian, dim1=-2, dim2=-1)
    d = d.sum(0) if d.dim() == 2 else d
    return torch.argsort(d.double(), descending=True, stable=True)


def _permuted(h: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """h [..., K, K] with rows and columns in ``perm``'s order."""
    return h.index_select(-1, perm).index_select(-2, perm)


def _work_dtype(w: torch.Tensor) -> torch.dtype:
    return torch.float64 if w.dtype == torch.float64 else torch.float32


def _gptq_rows(W: torch.Tensor, factors: list, spec: QuantSpec, block_size: int,
               order: Optional[torch.Tensor] = None) -> QuantizedWeight:
    """_gptq on len(factors) equal blocks of W's rows, each with its own factor; one QuantizedWeight."""
    if len(factors) == 1:
        return _gptq(W, factors[0], spec, block_size, order)
    parts = [_gptq(Wb, f, spec, block_size, order) for Wb, f in zip(W.chunk(len(factors)), factors)]
    cat = lambda name: None if getattr(parts[0], name) is None else torch.cat([getattr(p, name) for p in parts])
    return QuantizedWeight(spec, cat("qweight"), cat("scales"), cat("zeros"), tuple(W.shape))


def _check_options(damp, block_size) -> None:
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 <= damp < 1e3:
        raise ValueError(f"gptq: damp must be a number >= 0 (a fraction of the mean diagonal), got {damp!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"gptq: block_size must be an integer >= 1, got {block_size!r}")


def inverse_factor(hessian: torch.Tensor, damp: float = DEFAULT_DAMP):
    """(U, dead): the upper Cholesky factor (float64) of the inverse of the damped hessian, and the
    mask [K] of columns whose inputs were always zero (their H row and column are replaced by the
    identity's). Layers fed the same input (q/k/v, gate/up) can share one."""
    H = hessian.detach().to(torch.float64).clone()
    diag = torch.diagonal(H)
    dead = diag <= 0
    if dead.any():
        H[dead, :] = 0.0
        H[:, dead] = 0.0
        H[dead, dead] = 1.0
    diag.add_(damp * diag.mean())
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        raise ValueError(f"gptq: the hessian is not positive definite after damping with damp={damp} "
                         "(too few calibration tokens for this layer's width?): raise damp")
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True), dead


def _gptq(W: torch.Tensor, factor, spec: QuantSpec, block_size: int,
          order: Optional[torch.Tensor] = None) -> QuantizedWeight:
    """The column loop of gptq_quantize_weight on W [N, K] (its working dtype), given inverse_factor().
    ``order``: W and the factor are in this column order (static act-order): every group's grid is
    fixed first from the weights in their own order, and the result is in their own order."""
    U, dead = factor
    n, k = W.shape
    wdt = W.dtype
    W = W.clone()
    W[:, dead.to(W.device)] = 0.0
    U = U.to(device=W.device, dtype=wdt)
    G = spec.group_size or k
    static = order is not None and spec.bits == 4
    B = -(-block_size // G) * G if spec.bits == 4 and not static else block_size
    codes = torch.empty(n, k, dtype=wdt, device=W.device)
    if spec.bits == 8:
        scales = int8_scales(W, spec)
        s_col, z_col = scales.to(wdt), None
    elif static:
        scales, zeros = int4_group_grid(unpermute_columns(W, order), spec)
        group_of = (order // G).tolist()  # the group of each column in processing order
    else:
        ng = spec.ngroups(k)
        scales = torch.empty(n, ng, dtype=spec.torch_scale_dtype, device=W.device)
        zeros = torch.empty(n, ng, dtype=wdt, device=W.device)
    for i1 in range(0, k, B):
        i2 = min(i1 + B, k)
        W1 = W[:, i1:i2].clone()
        E1 = torch.empty_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if static:
                g = group_of[col]
                s_col, z_col = scales[:, g].to(wdt), zeros[:, g]
            elif spec.bits == 4 and col % G == 0:  # a new group: its grid from the corrected weights
                g = col // G
                s, z = int4_grid(W1[:, i:i + min(G, k - col)].unsqueeze(1), spec)
                scales[:, g], zeros[:, g] = s[:, 0], z[:, 0]
                s_col, z_col = s[:, 0].to(wdt), z[:, 0]
            x = W1[:, i]
            c = to_codes(x, s_col, z_col, spec.bits)
            codes[:, col] = c
            err = (x - (c if z_col is None else c - z_col) * s_col) / U1[i, i]
            W1[:, i + 1:].sub_(torch.outer(err, U1[i, i + 1:]))
            E1[:, i] = err
        W[:, i2:].sub_(E1 @ U[i1:i2, i2:])

    if order is not None:  # back to the weight's own column order
        codes = unpermute_columns(codes, order)
    if spec.bits == 8:
        return QuantizedWeight(spec, codes.to(torch.int8).contiguous(), scales.contiguous(), None, (n, k))
    kp = spec.ngroups(k) * G
    padded = zeros[:, -1:].expand(n, kp).clone()  # padding codes = the last group's zero point
    padded[:, :k] = codes
    return pack_codes(spec, padded, scales, zeros, (n, k))


# ---- calibration data -------------------------------------------------------------------------
def calibration_ids(tokenizer, texts: "str | Sequence[str] | None" = None, seq_len: int = 512,
                    sequences: int = 16) -> list:
    """Up to ``sequences`` windows of ``seq_len`` token ids (1-D LongTensors) cut one after another
    from the texts (None: the built-in calibration text; concatenated with blank lines, tokenized
    once, BOS first when the tokenizer defines one). Fewer windows when the text is short;
    ValueError when not even one fits."""
    if texts is None:
        from ..data import calibration_text_path

        with open(calibration_text_path(), encoding="utf-8") as f:
            texts = f.read()
    if isinstance(texts, str):
        texts = [texts]
    if seq_len < 2 or sequences < 1:
        raise ValueError(f"calibration needs seq_len >= 2 and sequences >= 1, got {seq_len}, {sequences}")
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    step = seq_len - (1 if bos is not None else 0)
    out = []
    for start in range(0, len(ids) - step + 1, step):
        if len(out) == sequences:
            break
        window = ids[start:start + step]
        out.append(torch.tensor(([bos] if bos is not None else []) + window, dtype=torch.long))
    if not out:
        raise ValueError(f"calibration text has {len(ids)} tokens: fewer than one window of {seq_len}")
    return out


# ---- walking a model ---------------------------------------------------------------------------
class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


def _decoder_layers(model: nn.Module, names: Sequence[str]):
    """(dotted name, ModuleList) of the module list holding the most planned layers, or None."""
    best = None
    for lname, mod in model.named_modules():
        if lname and isinstance(mod, nn.ModuleList) and len(mod) > 1:
            covered = sum(1 for n in names if n.startswith(lname + "."))
            if covered and (best is None or covered > best[2]):
                best = (lname, mod, covered)
    return None if best is None else best[:2]


class _Hessians:
    """Forward pre-hooks accumulating H = sum_t x_t x_t^T (fp32) of each named linear's input; an
    input tensor shared by several linears (q/k/v, gate/up) is multiplied once.

    values: {name of a value projection: (its attention module, heads, KV heads)}. For those, a
    forward hook on the attention module reads the attention probabilities A [B, heads, L, L]
    (eager attention returns them) and accumulates hv[name] = [G, K, K], G = KV heads (see the
    module docstring); h[name] keeps the plain H in case the module returns no probabilities."""

    def __init__(self, modules: dict, values: Optional[dict] = None):
        self.h, self.hv = {}, {}
        self._memo, self._inputs = {}, {}
        self._calls = {n: [0, 0] for n in (values or {})}  # value projections: [inputs seen, of them mixed]
        self._handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in modules.items()]
        for name, (attn, heads, kv_heads) in (values or {}).items():
            self._handles.append(attn.register_forward_hook(self._mix_hook(name, heads, kv_heads)))

    def _hook(self, name):
        def hook(mod, args):
            x = args[0]
            hit = self._memo.get(id(x))  # the memo holds x itself, so its id cannot be reused meanwhile
            if hit is None:
                x2 = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
                hit = self._memo[id(x)] = (x, x2.T @ x2)
            xtx = hit[1]
            self.h[name] = xtx.clone() if name not in self.h else self.h[name].add_(xtx)
            if name in self._calls:
                self._inputs[name] = x
                self._calls[name][0] += 1
        return hook

    def _mix_hook(self, name, heads, kv_heads):
        def hook(mod, args, out):
            x = self._inputs.pop(name, None)
            probs = out[1] if isinstance(out, (tuple, list)) and len(out) > 1 else None
            if x is None or not isinstance(probs, torch.Tensor) or probs.dim() != 4 or probs.shape[1] != heads \
                    or probs.shape[-1] != x.shape[-2] or x.dim() != 3:
                return
            y = probs.to(torch.float32) @ x.detach().to(torch.float32)[:, None]  # [B, heads, L, K]: A_h X
            y = y.transpose(0, 1).reshape(kv_heads, -1, x.shape[-1])  # heads of one KV head together
            hv = y.transpose(1, 2) @ y
            self.hv[name] = hv if name not in self.hv else self.hv[name].add_(hv)
            self._calls[name][1] += 1
        return hook

    def take(self, name):
        """The hessian of ``name``: [G, K, K] when every one of its inputs was mixed by the attention
        probabilities, else [K, K]; None if it saw no input."""
        h, hv = self.h.pop(name, None), self.hv.pop(name, None)
        seen, mixed = self._calls.get(name, (0, 0))
        return hv if hv is not None and seen == mixed else h

    def next_batch(self) -> None:
        self._memo.clear()
        self._inputs.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._memo.clear()
        self._inputs.clear()


class _ExpertHessians:
    """Forward pre-hooks on mixture-of-experts modules (quant/experts.py) accumulating, for each
    named 3-D expert projection and each expert e, H_e = sum x x^T over the inputs e sees: its
    routed tokens for gate_up_proj / up_proj (Llama 4: scaled by their router scores, as its experts
    see them), their gated activations (full-precision weights) for down_proj. An expert no
    calibration token reaches gets no H."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        self.h = {n: {} for n in names}
        by_module = {}
        for n in names:
            mod_name, _, pname = n.rpartition(".")
            by_module.setdefault(mod_name, []).append((n, pname))
        self._handles = [model.get_submodule(mod_name).register_forward_pre_hook(self._hook(wanted), with_kwargs=True)
                         for mod_name, wanted in by_module.items()]

    def _hook(self, wanted):
        from .experts import first_projection, routed_inputs

        def add(name, e, x):
            x = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
            h = self.h[name]
            h[e] = x.T @ x if e not in h else h[e].add_(x.T @ x)

        def hook(mod, args, kwargs):
            for e, x in routed_inputs(mod, args, kwargs):
                for name, pname in wanted:
                    add(name, e, first_projection(mod, e, x) if pname == "down_proj" else x)
        return hook

    def take(self, name) -> dict:
        return self.h.pop(name, {})

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class _LayerHessians:
    """_Hessians for the planned linears among ``names`` and _ExpertHessians for the expert stacks."""

    def __init__(self, model: nn.Module, names: Sequence[str], experts: set, values: Optional[dict] = None):
        self.linear = _Hessians({n: model.get_submodule(n) for n in names if n not in experts}, values)
        self.experts = _ExpertHessians(model, [n for n in names if n in experts])

    def next_batch(self) -> None:
        self.linear.next_batch()

    def remove(self) -> None:
        self.linear.remove()
        self.experts.remove()


def gptq_quantize_layers(model: nn.Module, plan: Sequence, calibration: Sequence[torch.Tensor],
                         make_layer: Callable, damp: float = DEFAULT_DAMP, block_size: int = DEFAULT_BLOCK,
                         progress: bool = False, attention_aware: bool = True,
                         act_order: "bool | str" = False) -> dict:
    """Quantize the planned linears [(name, QuantSpec)] of ``model`` in place with GPTQ; returns
    {"sequences", "tokens", "sequential_layers", "attention_aware_v"} (and "experts_rtn" with experts).

    Planned names that are 3-D expert parameters (quant/experts.py) get GPTQ per expert, each
    expert's H from the tokens routed to it; an expert no calibration token reaches is rounded to
    nearest (counted in "experts_rtn").

    make_layer(linear, QuantizedWeight, in_perm) -> the replacement module (in_perm: None, or the
    act-order column order when ``act_order`` is True and the layer INT4, expert stacks keeping
    their column order; with "static", every linear and expert takes its columns in act-order,
    each group's grid fixed first, and keeps its column order: ``gptq_quantize_weight``'s
    static_groups). Decoder layers (the module list that holds most planned linears) are done one
    at a time: their inputs are recorded once, each layer's H is collected from the current
    inputs, its linears are quantized, and the quantized layer's outputs become the next layer's
    inputs. Planned linears outside that list get their H from one more pass of the whole (by then
    quantized) model. Value projections of the decoder layers get the attention-aware H (module
    docstring; attention runs eagerly meanwhile) unless ``attention_aware`` is False (plain GPTQ:
    X^T X everywhere, attention as configured).
    """
    from .experts import expert_weights, install_quantized
    from .linear import _linear_weight
    from .model import expert_layer_names, set_submodule
    from .rtn import quantize_weight

    _check_options(damp, block_size)
    seqs = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in calibration]
    if not seqs or min(len(s) for s in seqs) < 1:
        raise ValueError("gptq needs at least one non-empty calibration sequence")
    device = next(model.parameters()).device
    spec_of = dict(plan)
    found = _decoder_layers(model, list(spec_of))
    stats = {"sequences": len(seqs), "tokens": int(sum(len(s) for s in seqs)), "sequential_layers": 0,
             "attention_aware_v": 0}
    experts = set(expert_layer_names(model)) & set(spec_of)
    if experts:
        stats["experts_rtn"] = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(spec_of), desc="GPTQ", unit="linear")

    def quantize_experts(name, hs):
        mod_name, _, pname = name.rpartition(".")
        mod = model.get_submodule(mod_name)
        qws = []
        for e, w in enumerate(expert_weights(mod, pname)):
            h = hs.get(e)
            check_weight(w, f"gptq ({name}, expert {e})")
            if h is None:
                stats["experts_rtn"] += 1
                qws.append(quantize_weight(w, spec_of[name]))
                continue
            if not torch.isfinite(h).all():
                raise ValueError(f"gptq: the inputs of {name}, expert {e} contain NaN or Inf")
            perm = act_order_perm(h) if act_order == "static" else None  # the layout stays: experts take it too
            qws.append(gptq_quantize_weight(w, h, spec_of[name], damp, block_size, perm=perm, static_groups=True))
        install_quantized(mod, pname, qws)
        if bar is not None:
            bar.update(1)

    def quantize(names, layer_hess):
        hess = layer_hess.linear
        factors = []  # [(H, its column order, its inverse factors)]: linears fed the same input share them
        for name in names:
            if name in experts:
                quantize_experts(name, layer_hess.experts.take(name))
                continue
            lin = model.get_submodule(name)
            h = hess.take(name)
            if h is None:
                raise ValueError(f"gptq: {name} received no input during calibration")
            if not torch.isfinite(h).all():
                raise ValueError(f"gptq: the inputs of {name} contain NaN or Inf")
            perm, f = next(((p, f) for h0, p, f in factors if h0.shape == h.shape and torch.equal(h0, h)), (None, None))
            if f is None:
                perm = act_order_perm(h) if act_order else None
                hp = h if perm is None else _permuted(h, perm)
                f = [inverse_factor(hg, damp) for hg in (hp if hp.dim() == 3 else hp[None])]
                factors.append((h, perm, f))
            stats["attention_aware_v"] += h.dim() == 3
            w = _linear_weight(lin).detach()
            check_weight(w, f"gptq ({name})")
            if perm is not None:
                w = w[:, perm.to(w.device)]
            # one grid per row (INT8) makes the permuted layout pointless: same codes, no gather
            static = perm is not None and (act_order == "static" or spec_of[name].bits == 8)
            qw = _gptq_rows(w.to(_work_dtype(w)), f, spec_of[name], block_size, perm if static else None)
            set_submodule(model, name, make_layer(lin, qw, None if static else perm))
            if bar is not None:
                bar.update(1)

    was_training = model.training
    model.eval()
    attn_before = _eager_attention(model) if found is not None and attention_aware else None
    try:
        with torch.no_grad():
            done = set()
            if found is not None:
                lname, layers = found
                values = _value_projections(model, [n for n in spec_of if n.startswith(lname + ".")
                                                    and n not in experts]) if attention_aware else {}
                done = _sequential(model, lname, layers, seqs, device, spec_of, values, quantize, experts)
                stats["sequential_layers"] = len(layers)
            rest = [n for n in spec_of if n not in done]
            if rest:
                hess = _LayerHessians(model, rest, experts)
                try:
                    for s in seqs:
                        model(input_ids=s[None].to(device), use_cache=False)
                        hess.next_batch()
                finally:
                    hess.remove()
                quantize(rest, hess)
    finally:
        if attn_before is not None:
            model.set_attn_implementation(attn_before)
        model.train(was_training)
        if bar is not None:
            bar.close()
    return stats


def _eager_attention(model: nn.Module) -> Optional[str]:
    """Switch a Hugging Face model to eager attention (the one that returns its probabilities);
    returns the implementation to restore, or None when nothing was changed."""
    before = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if before in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        return None
    try:
        model.set_attn_implementation("eager")
    except (ValueError, ImportError, AttributeError):
        return None
    return before


def _value_projections(model: nn.Module, names: Sequence[str]) -> dict:
    """{name: (attention module, heads, KV heads)} for the planned ``*.v_proj`` linears whose rows
    split evenly into the config's KV heads (separate q/k/v projections, as in Llama, Mistral,
    Qwen2, OPT); fused projections (GPT-2's c_attn) keep the plain H."""
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    heads = getattr(cfg, "num_attention_heads", None)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    if not isinstance(heads, int) or not isinstance(kv_heads, int) or kv_heads < 1 or heads % kv_heads:
        return {}
    out = {}
    for name in names:
        parent, _, leaf = name.rpartition(".")
        lin = model.get_submodule(name)
        rows = getattr(lin, "out_features", None)
        if leaf == "v_proj" and parent and isinstance(rows, int) and rows % kv_heads == 0:
            out[name] = (model.get_submodule(parent), heads, kv_heads)
    return out


def _sequential(model, lname, layers, seqs, device, spec_of, values, quantize, experts) -> set:
    """The layer-by-layer part of gptq_quantize_layers; returns the names it quantized."""
    # One pass of the full-precision model records each layer's call (its arguments besides the
    # hidden states: masks and position embeddings can differ per layer) and layer 0's input.
    # When the first sequence shows every layer called with layer 0's very objects (Llama-like
    # models: one mask, one position embedding for all), the later sequences stop at layer 0:
    # the rest of that pass, a third of GPTQ's forward work, would only record the same again.
    calls = [[None] * len(seqs) for _ in layers]
    hidden = [None] * len(seqs)
    cur = [0]
    shared = [False]

    def recorder(i):
        def hook(mod, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            rest_kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            calls[i][cur[0]] = (tuple(args[1:]) if args else (), rest_kwargs)
            if i == 0:
                hidden[cur[0]] = h.detach()
            if i == len(layers) - 1 or (i == 0 and shared[0]):
                raise _Stop
        return hook

    handles = [layer.register_forward_pre_hook(recorder(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for j, s in enumerate(seqs):
            cur[0] = j
            try:
                model(input_ids=s[None].to(device), use_cache=False)
            except _Stop:
                pass
            if j == 0:
                shared[0] = all(c is not None and _same_call(c, calls[0][0]) for c in (row[0] for row in calls))
            elif shared[0]:
                for row in calls[1:]:
                    row[j] = calls[0][j]
    finally:
        for h in handles:
            h.remove()
    if any(c is None for row in calls for c in row):
        raise ValueError(f"gptq: not every layer of {lname} ran during calibration")

    done = set()
    for i, layer in enumerate(layers):
        prefix = f"{lname}.{i}."
        names = [n for n in spec_of if n.startswith(prefix)]
        if names:
            hess = _LayerHessians(model, names, experts, {n: values[n] for n in names if n in values})
            try:
                for j in range(len(seqs)):
                    _call(layer, hidden[j], calls[i][j])
                    hess.next_batch()
            finally:
                hess.remove()
            quantize(names, hess)
            done.update(names)
        for j in range(len(seqs)):  # the (now quantized) layer's outputs feed the next layer
            hidden[j] = _call(layer, hidden[j], calls[i][j])
    return done


def _same_call(a, b) -> bool:
    """Whether two recorded calls (args, kwargs) pass the very same objects."""
    (aa, ak), (ba, bk) = a, b
    return len(aa) == len(ba) and all(x is y for x, y in zip(aa, ba)) and ak.keys() == bk.keys() \
        and all(ak[k] is bk[k] for k in ak)


def _call(layer, h, call):
    args, kwargs = call
    out = layer(h, *args, **kwargs)
    return (out[0] if isinstance(out, (tuple, list)) else out).detach()
