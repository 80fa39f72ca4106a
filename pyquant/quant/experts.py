"""Mixture-of-experts layers whose experts are 3-D parameters, not nn.Linear modules.

transformers 5 stores the experts of Mixtral, Qwen2/3-MoE, OLMoE, gpt-oss and others as one
parameter per projection, ``gate_up_proj [E, 2I, H]`` (or ``up_proj``) and ``down_proj [E, H, I]``
(``[E, in, out]`` where the class is ``is_transposed``), in a module that
``transformers.integrations.use_experts_implementation`` decorates (attributes ``has_gate``,
``has_bias``, ``is_transposed``, ``_apply_gate``, ``act_fn``; the forward is picked by
``config._experts_implementation``). Without this module quantize_model would leave those
parameters, most of such a model's weights, in full precision.

``QuantExpertStack`` replaces one such parameter: E QuantLinear children ("0", "1", ...), each
expert's matrix in nn.Linear orientation [out, in]. ``experts_forward`` is registered as the
"pyquant" experts implementation: each routed expert's projections run through qmatmul, then the
module's own gate (``_apply_gate`` or ``act_fn``), bias and post-expert norm. It also runs
experts left in full precision, so one model may mix both. Indexing a stack (``stack[e]``) gives
the expert's dequantized weight in the parameter's layout, for code that reads it directly.

Llama 4's experts (``PRE_WEIGHTED``) are called another way: on [E * T, H], every token once per
expert, already multiplied by its router score (0 where the expert was not routed), parameters
``[E, in, out]``. Once one of their projections is quantized, the module's forward becomes
``pre_weighted_forward``, which runs each expert on its nonzero rows only (a zero row gives a zero
output in both, so the result is the dense one).
"""
from __future__ import annotations

import inspect
import types

import torch
from torch import nn
from torch.nn import functional as F

from ..ops.qmatmul import grouped_qmatmul, grouped_rows
from .linear import QuantLinear
from .rtn import quantize_weight

IMPLEMENTATION = "pyquant"


PRE_WEIGHTED = ("Llama4TextExperts",)  # experts classes called on pre-weighted copies of every token


def is_fused_experts(module: nn.Module) -> bool:
    """True for an experts module with 3-D expert parameters that pyquant can run quantized: a
    transformers experts module (see the module docstring) whose forward takes (hidden_states,
    top_k_index, top_k_weights) as the experts interface does (gpt-oss names them router_indices,
    routing_weights), which experts_forward answers; or a ``PRE_WEIGHTED`` one (Llama 4), which
    pre_weighted_forward answers."""
    if not expert_param_names(module):
        return False
    if is_pre_weighted(module):
        return True
    if not (hasattr(module, "has_gate") and hasattr(module, "is_transposed")):
        return False
    return len(_routing_params(module)) == 3


def is_pre_weighted(module: nn.Module) -> bool:
    """True for a Llama-4-style experts module (``PRE_WEIGHTED``, module docstring)."""
    return type(module).__name__ in PRE_WEIGHTED and hasattr(module, "act_fn")


def _routing_params(module: nn.Module) -> "list[str]":
    """The positional parameters of the undecorated experts forward (empty when not decorated)."""
    fn = getattr(type(module).forward, "__wrapped__", None)  # use_experts_implementation's original forward
    if fn is None:
        return []
    params = list(inspect.signature(fn).parameters.values())[1:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def is_transposed(module: nn.Module) -> bool:
    """True when the module stores its expert matrices as [E, in, out]."""
    return is_pre_weighted(module) or module.is_transposed


def _has_gate(module: nn.Module) -> bool:
    return is_pre_weighted(module) or module.has_gate


def expert_param_names(module: nn.Module) -> "list[str]":
    """The module's expert projections stored as 3-D parameters or already quantized stacks, in order."""
    out = []
    for name in ("gate_up_proj", "up_proj", "down_proj"):
        p = getattr(module, name, None)
        if isinstance(p, QuantExpertStack) or (isinstance(p, torch.Tensor) and p.dim() == 3):
            out.append(name)
    return out


class QuantExpertStack(nn.Module):
    """E quantized expert matrices standing in for a 3-D expert parameter [E, out, in] (or [E, in, out]
    when ``transposed``): child str(e) is expert e's QuantLinear (nn.Linear orientation, no bias)."""

    def __init__(self, experts: "list[QuantLinear]", transposed: bool, dtype: torch.dtype = torch.float32):
        super().__init__()
        if not experts:
            raise ValueError("QuantExpertStack needs at least one expert")
        for e, q in enumerate(experts):
            self.add_module(str(e), q)
        self.transposed = bool(transposed)
        self.dtype = dtype  # the parameter's dtype: what indexing returns

    @classmethod
    def empty(cls, num: int, out_features: int, in_features: int, spec, transposed: bool,
              dtype: torch.dtype, in_perm: bool = False) -> "QuantExpertStack":
        """A shell on "meta" to load a state dict into (save_quantized's layout)."""
        return cls([QuantLinear(in_features, out_features, spec, bias=False, device="meta", in_perm=in_perm)
                    for _ in range(num)], transposed, dtype)

    def expert(self, e: int) -> QuantLinear:
        return self._modules[str(int(e))]

    def __len__(self) -> int:
        return len(self._modules)

    @property
    def shape(self) -> torch.Size:
        q = self.expert(0)
        rows = (q.in_features, q.out_features) if self.transposed else (q.out_features, q.in_features)
        return torch.Size((len(self), *rows))

    def __getitem__(self, idx) -> torch.Tensor:
        """Dequantized weight(s) in the parameter's layout: one expert [out, in] (or [in, out]), or
        a stack of them for a 1-D tensor of expert ids."""
        if isinstance(idx, torch.Tensor) and idx.dim() > 0:
            return torch.stack([self[int(e)] for e in idx.reshape(-1).tolist()]).view(*idx.shape, *self.shape[1:])
        w = self.expert(int(idx)).qw.dequantize(self.dtype)
        return w.t() if self.transposed else w

    def linear(self, e: int, x: torch.Tensor, bias: "torch.Tensor | None" = None) -> torch.Tensor:
        """x[..., in] through expert e: x @ W_e.T (+ bias), by qmatmul."""
        y = self.expert(e)(x)
        return y if bias is None else y + bias.to(y.dtype)

    def grouped_linear(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x[R, in] sorted by expert, ``counts[e]`` rows for expert e, each through its expert (no bias);
        rows past sum(counts) give zeros. Compiled: one pq.ops.grouped_qmatmul over every expert's
        weight; eager: only the experts with rows are touched (Python work per call grows with the
        experts reached, not with all 128 of a Qwen3-MoE layer)."""
        if torch.compiler.is_compiling() or type(x) is not torch.Tensor:
            experts = [self.expert(e) for e in range(len(self))]
            return grouped_qmatmul(x, counts, [q.qw for q in experts], [q._buffers["in_perm"] for q in experts],
                                   backend=experts[0].backend_name)
        return grouped_rows(x, counts.tolist(), self.expert(0).out_features, lambda e, rows: self.expert(e)(rows))

    def extra_repr(self) -> str:
        q = self.expert(0)
        return f"experts={len(self)}, in_features={q.in_features}, out_features={q.out_features}, spec={q.spec}, " \
               f"transposed={self.transposed}"


def routed(module: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor):
    """For each expert e routed at least one token: (e, sel, rows), sel indexing the flattened [T * k]
    routing entries that chose e and rows their tokens."""
    k = top_k_index.shape[-1]
    ids = top_k_index.reshape(-1)
    token = torch.arange(hidden_states.shape[0], device=hidden_states.device).repeat_interleave(k)
    num = len(getattr(module, "down_proj"))
    for e in torch.unique(ids).tolist():
        if 0 <= e < num:  # not an expert-parallel sentinel
            sel = (ids == e).nonzero().squeeze(1)
            yield e, sel, token[sel]


def _gated(module: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The input of the experts' down_proj from their gate-and-up (or up) projection's output h."""
    if not _has_gate(module):
        return module.act_fn(h)
    if hasattr(module, "_apply_gate"):
        return module._apply_gate(h)
    gate, up = h.chunk(2, dim=-1)  # Llama 4: [gate; up], as transformers' default gate
    return module.act_fn(gate) * up


def _first_name(module: nn.Module) -> str:
    return "gate_up_proj" if _has_gate(module) else "up_proj"


def first_projection(module: nn.Module, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert e's gate-and-up (or up) projection of x, gated: the input of its down_proj."""
    return _gated(module, _expert_linear(module, _first_name(module), e, x))


def _expert_linear(module: nn.Module, name: str, e: int, x: torch.Tensor) -> torch.Tensor:
    weight = getattr(module, name)
    bias = getattr(module, name + "_bias")[e] if getattr(module, "has_bias", False) else None
    if isinstance(weight, QuantExpertStack):
        return weight.linear(e, x, bias)
    w = weight[e]
    return F.linear(x, w.t() if is_transposed(module) else w, bias)


def _sorted_by_expert(key: torch.Tensor, num: int):
    """(order, key[order], counts): the rows ordered by their expert ``key`` (``num``: none, last), stably,
    and the rows of each of the ``num`` experts. Shapes fixed by ``key``'s, so torch.compile sees none
    that depends on the routing."""
    order = key.argsort(stable=True)
    counts = torch.zeros(num + 1, dtype=torch.int64, device=key.device).scatter_add_(0, key, torch.ones_like(key))
    return order, key[order], counts[:num]


def _grouped_expert_linear(module: nn.Module, name: str, x: torch.Tensor, key: torch.Tensor,
                           counts: torch.Tensor) -> torch.Tensor:
    """Rows x[R, in] sorted by expert (``key``: each row's, ``counts``: rows per expert) through each one's
    ``name`` projection (+ its bias); a row of no expert gives zeros."""
    weight, num = getattr(module, name), counts.numel()
    if isinstance(weight, QuantExpertStack):
        y = weight.grouped_linear(x, counts)
    else:  # full-precision experts (a stack left unquantized): one F.linear per expert
        def run(e, rows):
            w = weight[e]
            return F.linear(rows, w.t() if is_transposed(module) else w)
        y = grouped_rows(x, counts.tolist(), weight.shape[-2 if not is_transposed(module) else -1], run)
    if getattr(module, "has_bias", False):
        bias = getattr(module, name + "_bias")
        y = y + torch.where((key < num)[:, None], bias[key.clamp(max=num - 1)], 0).to(y.dtype)
    return y


def _experts_on_rows(module: nn.Module, x: torch.Tensor, key: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Each row of x[R, H] (sorted by expert: ``key``, ``counts``) through its expert, up (-> gate) -> down
    (-> post-expert norm); zeros for a row of no expert."""
    h = _gated(module, _grouped_expert_linear(module, _first_name(module), x, key, counts))
    y = _grouped_expert_linear(module, "down_proj", h, key, counts)
    if getattr(module, "has_post_expert_norm", False):  # the norm of a zero row need not be zero
        y = torch.where((key < counts.numel())[:, None], module.post_expert_norm(y), 0)
    return y


def experts_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor) -> torch.Tensor:
    """The "pyquant" experts implementation: hidden_states [T, H], top_k_index / top_k_weights
    [T, k] -> [T, H], each token's experts' outputs weighted and summed (in float32). The routing
    entries are sorted by expert and each expert's rows go through one grouped matmul
    (pq.ops.grouped_qmatmul): no shape depends on the routing, so torch.compile(fullgraph=True) traces it."""
    num, k = len(getattr(self, "down_proj")), top_k_index.shape[-1]
    ids = top_k_index.reshape(-1)
    key = torch.where((ids >= 0) & (ids < num), ids, num)  # an expert-parallel sentinel: no expert
    order, key, counts = _sorted_by_expert(key, num)
    rows = torch.arange(hidden_states.shape[0], device=hidden_states.device).repeat_interleave(k)[order]
    y = _experts_on_rows(self, hidden_states[rows], key, counts)
    weights = top_k_weights.reshape(-1)[order]  # y is zero where no expert
    out = torch.zeros(hidden_states.shape, dtype=torch.float32, device=hidden_states.device)
    out.index_add_(0, rows, y.float() * weights[:, None].float())
    return out.to(hidden_states.dtype)


def _pre_weighted_view(module: nn.Module, hidden_states: torch.Tensor):
    """x [E, T, H] (the pre-weighted input viewed per expert) and live [E, T], its nonzero rows."""
    x = hidden_states.view(len(getattr(module, "down_proj")), -1, hidden_states.shape[-1])
    return x, x.ne(0).any(-1)


def _pre_weighted_rows(module: nn.Module, hidden_states: torch.Tensor):
    """x [E, T, H] (the pre-weighted input viewed per expert) and, for each expert with a nonzero
    row, (e, rows)."""
    x, live = _pre_weighted_view(module, hidden_states)
    return x, [(e, live[e].nonzero().squeeze(1)) for e in live.any(1).nonzero().squeeze(1).tolist()]


def pre_weighted_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """A ``PRE_WEIGHTED`` module's forward once pyquant runs it: hidden_states [E * T, H] -> [E * T, H],
    each expert on its nonzero rows (the others stay zero, as the dense product gives). Eager: a loop
    over the experts reached (fewest operations at decode sizes); compiled: the rows sorted by
    expert through grouped matmuls, as experts_forward (no shape depends on which rows are live)."""
    if torch.compiler.is_compiling():
        x, live = _pre_weighted_view(self, hidden_states)
        num = x.shape[0]
        x = x.reshape(-1, x.shape[-1])
        experts = torch.arange(num, device=x.device)[:, None].expand_as(live)
        order, key, counts = _sorted_by_expert(torch.where(live, experts, num).reshape(-1), num)
        out = torch.zeros_like(x).index_copy_(0, order, _experts_on_rows(self, x[order], key, counts).to(x.dtype))
        return out.view(hidden_states.shape)
    x, routes = _pre_weighted_rows(self, hidden_states)
    out = torch.zeros(x.shape, dtype=hidden_states.dtype, device=hidden_states.device)
    for e, rows in routes:
        out[e, rows] = _expert_linear(self, "down_proj", e, first_projection(self, e, x[e, rows])).to(out.dtype)
    return out.view(hidden_states.shape)


def routed_inputs(module: nn.Module, args: tuple, kwargs: dict):
    """From an experts module's call arguments: (e, x) for each expert reached, x the rows of its
    first projection's input (the routed tokens; pre-weighted for Llama 4)."""
    if is_pre_weighted(module):
        hidden = args[0] if args else kwargs["hidden_states"]
        x, routes = _pre_weighted_rows(module, hidden)
        for e, rows in routes:
            yield e, x[e, rows]
        return
    names = _routing_params(module)
    got = list(args[:2]) + [kwargs[p] for p in names[len(args[:2]):2]]
    hidden, index = got[0], got[1]
    for e, _, rows in routed(module, hidden, index):
        yield e, hidden[rows]


def use_pyquant_experts(module: nn.Module) -> None:
    """Route ``module`` (and every experts module sharing its config) through experts_forward, or a
    ``PRE_WEIGHTED`` module through pre_weighted_forward."""
    if is_pre_weighted(module):
        module.forward = types.MethodType(pre_weighted_forward, module)
        return
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    ALL_EXPERTS_FUNCTIONS.register(IMPLEMENTATION, experts_forward)
    module.config._experts_implementation = IMPLEMENTATION


def quantize_experts(module: nn.Module, name: str, spec) -> QuantExpertStack:
    """Replace the 3-D parameter ``module.<name>`` by its RTN-quantized QuantExpertStack; returns it."""
    return install_quantized(module, name, [quantize_weight(w, spec) for w in expert_weights(module, name)])


def expert_weights(module: nn.Module, name: str) -> "list[torch.Tensor]":
    """Each expert's matrix of the 3-D parameter ``module.<name>`` in nn.Linear orientation [out, in]."""
    w = getattr(module, name).detach()
    return [w[e].t() if is_transposed(module) else w[e] for e in range(w.shape[0])]


def install_quantized(module: nn.Module, name: str, weights: "list", perms: "list | None" = None) -> QuantExpertStack:
    """Replace the 3-D parameter ``module.<name>`` by a stack of the given QuantizedWeights (one per
    expert), each with its input permutation if ``perms`` (GPTQ act-order; QuantLinear.in_perm)."""
    dtype = getattr(module, name).dtype
    perms = perms or [None] * len(weights)
    return _install(module, name, QuantExpertStack([QuantLinear.from_quantized(q, in_perm=p)
                                                    for q, p in zip(weights, perms)], is_transposed(module), dtype))


def _install(module: nn.Module, name: str, stack: QuantExpertStack) -> QuantExpertStack:
    delattr(module, name)
    module.add_module(name, stack)
    use_pyquant_experts(module)
    return stack


def install_empty(module: nn.Module, name: str, num: int, out_features: int, in_features: int, spec,
                  dtype: torch.dtype, in_perm: bool = False) -> None:
    """load_quantized's shell: ``module.<name>`` becomes an empty QuantExpertStack on "meta"."""
    _install(module, name, QuantExpertStack.empty(num, out_features, in_features, spec, is_transposed(module),
                                                  dtype, in_perm=in_perm))
