"""GPTQ: the blocked fp32/fp64 implementation against a float64 column-by-column (OBQ-style)
oracle written here, RTN equivalence for a diagonal H, the error it saves, and the model walk."""
import copy

import pytest
import torch

import pyquant as pq
from pyquant.formats import QuantSpec
from pyquant.quant import gptq as G
from pyquant.quant.linear import QuantLinear
from pyquant.quant.model import quantized_layers
from pyquant.quant.rtn import int4_grid, int8_scales, to_codes
from tinymodels import random_ids, tiny_gpt2, tiny_llama

SPECS = ["int8", "int4-g32", "int4-g128", "int4-g64-sym", "int4-g32-fp16"]


def correlated_inputs(t: int, k: int, gen=None) -> torch.Tensor:
    """Inputs [t, k] with strongly correlated features (what makes GPTQ differ from RTN)."""
    return torch.randn(t, k, generator=gen) @ (0.3 * torch.randn(k, k, generator=gen) + torch.eye(k))


def obq_reference(w: torch.Tensor, H: torch.Tensor, spec: QuantSpec, damp: float, grids=None) -> torch.Tensor:
    """Codes [N, K] of GPTQ in float64 without blocks or Cholesky: quantize column j, spread its
    error over the later columns with the inverse Hessian of the columns still free, then
    eliminate column j from that inverse (Gaussian elimination, as in OBQ). ``grids``: [(scale,
    zero)] per column, fixed in advance (static groups), instead of each group's grid taken from
    the corrected weights when the group starts."""
    W = w.double().clone()
    Hd = H.double().clone()
    Hd.diagonal().add_(damp * Hd.diagonal().mean())
    Hinv = torch.linalg.inv(Hd)
    n, k = W.shape
    codes = torch.empty(n, k, dtype=torch.float64)
    if spec.bits == 8:
        s, z = int8_scales(W, spec).double(), None
    for j in range(k):
        if grids is not None:
            s, z = grids[j]
        elif spec.bits == 4 and j % spec.group_size == 0:
            sg, zg = int4_grid(W[:, j:j + spec.group_size].unsqueeze(1), spec)
            s, z = sg[:, 0].double(), zg[:, 0]
        c = to_codes(W[:, j], s, z, spec.bits)
        codes[:, j] = c
        err = W[:, j] - (c if z is None else c - z) * s
        W[:, j + 1:] -= torch.outer(err / Hinv[j, j], Hinv[j, j + 1:])
        Hinv = Hinv - torch.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]
    return codes


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("k", [200, 256])
def test_diagonal_hessian_gives_exactly_rtn(spec, k):
    w = torch.randn(37, k)
    H = torch.diag(torch.rand(k) + 0.1)  # no correlations: nothing to correct
    got, want = G.gptq_quantize_weight(w, H, spec), pq.quantize_weight(w, spec)
    for name, t in want.tensors().items():
        assert torch.equal(got.tensors()[name], t), name


@pytest.mark.parametrize("spec,block", [("int8", 16), ("int4-g32", 32), ("int4-g32-sym", 64), ("int4-g64", 128)])
def test_matches_float64_column_by_column_reference(spec, block):
    spec = QuantSpec.parse(spec)
    k = 150  # ragged last group for every group size
    w = torch.randn(23, k, dtype=torch.float64)
    X = correlated_inputs(400, k).double()
    H = X.T @ X
    got = G.gptq_quantize_weight(w, H, spec, damp=0.01, block_size=block)
    want = obq_reference(w, H, spec, damp=0.01)
    assert torch.equal(got.codes().double()[:, :k], want)


@pytest.mark.parametrize("spec", ["int8", "int4-g32", "int4-g128-sym"])
def test_gptq_cuts_the_output_error_of_rtn(spec):
    k = 256
    w = torch.randn(64, k)
    X = correlated_inputs(2000, k)
    err = lambda qw: ((X @ (w - qw.dequantize()).T) ** 2).sum()  # noqa: E731
    ratio = err(G.gptq_quantize_weight(w, X.T @ X, spec)) / err(pq.quantize_weight(w, spec))
    assert ratio < 0.8, ratio


def test_float32_agrees_with_float64():
    w = torch.randn(40, 192, dtype=torch.float64)
    X = correlated_inputs(500, 192).double()
    a = G.gptq_quantize_weight(w, X.T @ X, "int4-g64").codes()
    b = G.gptq_quantize_weight(w.float(), (X.T @ X).float(), "int4-g64").codes()
    assert (a != b).float().mean() < 0.01  # only near-ties may round the other way


def test_columns_without_input_become_zero():
    k = 96
    X = correlated_inputs(300, k)
    X[:, [5, 40, 95]] = 0
    w = torch.randn(16, k)
    qw = G.gptq_quantize_weight(w, X.T @ X, "int4-g32")
    dq = qw.dequantize()
    assert torch.isfinite(dq).all() and (dq[:, [5, 40, 95]] == 0).all()


def test_bad_input():
    w = torch.randn(8, 64)
    with pytest.raises(ValueError, match="hessian must be"):
        G.gptq_quantize_weight(w, torch.eye(32), "int8")
    with pytest.raises(ValueError, match="NaN"):
        G.gptq_quantize_weight(w, torch.full((64, 64), float("nan")), "int8")
    with pytest.raises(ValueError, match="damp"):
        G.gptq_quantize_weight(w, torch.eye(64), "int8", damp=-1)
    with pytest.raises(ValueError, match="block_size"):
        G.gptq_quantize_weight(w, torch.eye(64), "int8", block_size=0)
    with pytest.raises(ValueError, match="positive definite"):
        G.gptq_quantize_weight(torch.randn(3, 2), torch.tensor([[1.0, 2.0], [2.0, 1.0]]), "int8", damp=0)
    with pytest.raises(ValueError, match="2-D"):
        G.gptq_quantize_weight(torch.randn(64), torch.eye(64), "int8")


# ---- calibration windows ---------------------------------------------------------------------
def test_calibration_ids_cuts_windows(tokenizer):
    text = " ".join(f"w{3 + i % 200}" for i in range(100))
    wins = G.calibration_ids(tokenizer, text, seq_len=20, sequences=3)
    assert len(wins) == 3 and all(len(x) == 20 and x[0] == tokenizer.bos_token_id for x in wins)
    body = torch.cat([x[1:] for x in wins]).tolist()
    assert body == tokenizer(text, add_special_tokens=False)["input_ids"][:57]  # consecutive, no overlap
    assert len(G.calibration_ids(tokenizer, text, seq_len=20, sequences=100)) == 100 // 19
    with pytest.raises(ValueError, match="fewer than one window"):
        G.calibration_ids(tokenizer, "w3 w4", seq_len=20)
    from pyquant.data import calibration_text_path

    with open(calibration_text_path(), encoding="utf-8") as f:  # no texts: the built-in calibration text
        builtin = G.calibration_ids(tokenizer, f.read(), seq_len=20, sequences=2)
    assert [x.tolist() for x in G.calibration_ids(tokenizer, seq_len=20, sequences=2)] == [x.tolist() for x in builtin]


# ---- the model walk ----------------------------------------------------------------------------
def _input_hessians(model, names, calib):
    """{name: X^T X} of each named module's input over the calibration sequences (fp32)."""
    hs, handles = {}, []
    for n in names:
        def hook(mod, args, n=n):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            hs[n] = hs.get(n, 0) + x.T @ x
        handles.append(model.get_submodule(n).register_forward_pre_hook(hook))
    with torch.no_grad():
        for s in calib:
            model(input_ids=s[None], use_cache=False)
    for h in handles:
        h.remove()
    return hs


@pytest.fixture
def seen_hessians(monkeypatch):
    """The list of every hessian GPTQ factors from now on (inverse_factor records its argument)."""
    seen = []
    real = G.inverse_factor
    monkeypatch.setattr(G, "inverse_factor", lambda h, damp: (seen.append(h.clone()), real(h, damp))[1])
    return seen


def test_each_layer_is_calibrated_on_its_quantized_predecessors(seen_hessians):
    model = tiny_llama(seed=3)
    calib = [random_ids(1, 24)[0] for _ in range(4)]
    seen = seen_hessians
    fp = copy.deepcopy(model)
    pq.quantize_model(model, "int4-g32", skip=(), method="gptq", calibration=calib, act_order=False)  # H as collected
    names = ["model.layers.1.self_attn.q_proj", "lm_head"]
    want = _input_hessians(model, names, calib)  # inputs through the final quantized model
    before = _input_hessians(fp, names, calib)  # ... and through the full-precision one
    for n in names:
        assert any(h.shape == want[n].shape and torch.allclose(h, want[n], rtol=1e-5, atol=1e-4) for h in seen), n
        assert not torch.allclose(want[n], before[n], rtol=1e-3), n  # the test can tell them apart
    # q/k and gate/up share a factor, v_proj has one per KV head: 2 layers x (qk, 2 v, o, gate+up, down) + lm_head
    assert len(seen) == 2 * 6 + 1


def test_recording_stops_at_layer_0_when_every_layer_gets_the_same_arguments(monkeypatch):
    """After the first sequence shows every decoder layer called with layer 0's objects (Llama),
    the recording pass of the later sequences stops at layer 0 and reuses its call: the same
    quantized model as recording every layer of every sequence, with fewer layer forwards."""
    calib = [random_ids(1, 16)[0] for _ in range(3)]
    runs = {}
    for record_all in (False, True):
        if record_all:
            monkeypatch.setattr(G, "_same_call", lambda a, b: False)
        model = tiny_llama(seed=7, layers=3)
        done = [0]  # layer 1's completed forwards
        handle = model.model.layers[1].register_forward_hook(lambda mod, args, out: done.__setitem__(0, done[0] + 1))
        pq.quantize_model(model, "int4-g32", method="gptq", calibration=calib, progress=False)
        handle.remove()
        runs[record_all] = ({k: v.clone() for k, v in model.state_dict().items()}, done[0])
    (fast, n_fast), (full, n_full) = runs[False], runs[True]
    assert fast.keys() == full.keys() and all(torch.equal(fast[k], full[k]) for k in fast)
    assert n_full - n_fast == len(calib) - 1  # layer 1 ran in the recording pass of sequence 0 only


def _attention_mixed_hessians(model, name, layer, calib, kv_heads):
    """[G, K, K]: sum over the calibration sequences and the heads h reading KV head g of
    (A_h X)^T (A_h X), X the input of ``name``, A_h layer ``layer``'s attention probabilities."""
    model = copy.deepcopy(model)
    model.set_attn_implementation("eager")
    xs = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda mod, args: xs.append(args[0][0].double()))
    out = 0
    with torch.no_grad():
        for s in calib:
            A = model(input_ids=s[None], use_cache=False, output_attentions=True).attentions[layer][0].double()
            per_head = [(A[h] @ xs[-1]).T @ (A[h] @ xs[-1]) for h in range(A.shape[0])]
            group = A.shape[0] // kv_heads
            out = out + torch.stack([sum(per_head[g * group:(g + 1) * group]) for g in range(kv_heads)])
    handle.remove()
    return out


def test_value_projection_gets_the_attention_mixed_hessian_per_kv_head(seen_hessians):
    model = tiny_llama(seed=5)
    calib = [random_ids(1, 20)[0] for _ in range(3)]
    seen = seen_hessians
    want = _attention_mixed_hessians(model, "model.layers.0.self_attn.v_proj", 0, calib, kv_heads=2)
    plain = _input_hessians(model, ["model.layers.0.self_attn.v_proj"], calib)["model.layers.0.self_attn.v_proj"]
    attn = model.config._attn_implementation
    pq.quantize_model(model, "int4-g32", method="gptq", calibration=calib, progress=False, act_order=False)
    for g in range(2):
        assert any(torch.allclose(h.double(), want[g], rtol=1e-4, atol=1e-4) for h in seen), g
        assert not torch.allclose(want[g], plain.double(), rtol=1e-2)  # the test can tell them apart
    assert model.pyquant_config["gptq"]["attention_aware_v"] == 2
    assert model.config._attn_implementation == attn  # the walk's eager attention is undone
    seen.clear()
    plain_model = tiny_llama(seed=5)
    pq.quantize_model(plain_model, "int4-g32", method="gptq", calibration=calib, progress=False, attention_aware=False,
                      act_order=False)
    assert any(torch.allclose(h.double(), plain.double(), rtol=1e-4, atol=1e-4) for h in seen)
    assert not any(h.shape == want[0].shape and torch.allclose(h.double(), want[0], rtol=1e-2) for h in seen)
    assert plain_model.pyquant_config["gptq"]["attention_aware_v"] == 0


def _act_order_problem(seed: int, k: int = 150):
    """(w [19, k] float64, H of correlated inputs whose scales spread by e^N(0,1), its act-order
    permutation); k = 150 gives every group size a ragged last group."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(19, k, generator=gen, dtype=torch.float64)
    X = correlated_inputs(400, k, gen).double() * torch.exp(torch.randn(k, generator=gen, dtype=torch.float64))
    H = X.T @ X
    return w, H, G.act_order_perm(H)


@pytest.mark.parametrize("spec", ["int8", "int4-g32", "int4-g128-sym"])
def test_act_order_is_gptq_of_the_permuted_columns(spec):
    w, H, perm = _act_order_problem(5)
    k = w.shape[1]
    assert torch.equal(H.diagonal()[perm], H.diagonal().sort(descending=True).values)
    got = G.gptq_quantize_weight(w, H, spec, damp=0.01, block_size=32, perm=perm)
    want = obq_reference(w[:, perm], H[perm][:, perm], QuantSpec.parse(spec), damp=0.01)
    assert torch.equal(got.codes().double()[:, :k], want)
    diag, w32 = torch.diag(H.diagonal()).float(), w.float()  # no correlations: RTN of the permuted columns
    for name, t in pq.quantize_weight(w32[:, perm], spec).tensors().items():
        assert torch.equal(G.gptq_quantize_weight(w32, diag, spec, perm=perm).tensors()[name], t), name


@pytest.mark.parametrize("spec", ["int8", "int4-g32", "int4-g128-sym", "int4-g64-fp16"])
def test_static_act_order_fixes_every_grid_first_and_keeps_the_column_order(spec):
    """static_groups: columns in act-order, each against its own group's grid taken from w before
    anything is quantized (the oracle, fed those grids), the result in w's column order."""
    w, H, perm = _act_order_problem(8)
    k = w.shape[1]
    sp = QuantSpec.parse(spec)
    got = G.gptq_quantize_weight(w, H, spec, damp=0.01, block_size=32, perm=perm, static_groups=True)
    if sp.bits == 4:
        grid = [int4_grid(w[:, c:c + sp.group_size].unsqueeze(1), sp) for c in range(0, k, sp.group_size)]
        assert torch.equal(got.scales, torch.cat([s for s, _ in grid], 1))
        cols = [(grid[j // sp.group_size][0][:, 0].double(), grid[j // sp.group_size][1][:, 0]) for j in perm.tolist()]
    else:
        cols = [(int8_scales(w, sp).double(), None)] * k
    want = obq_reference(w[:, perm], H[perm][:, perm], sp, damp=0.01, grids=cols)
    assert torch.equal(got.codes().double()[:, :k][:, perm], want)
    if sp.bits == 8:  # one grid per row: the permuted result's codes, put back in place
        permuted = G.gptq_quantize_weight(w, H, spec, damp=0.01, block_size=32, perm=perm)
        assert torch.equal(got.codes()[:, perm], permuted.codes())
    diag, w32 = torch.diag(H.diagonal()).float(), w.float()  # no correlations: RTN of w itself
    for name, t in pq.quantize_weight(w32, spec).tensors().items():
        assert torch.equal(G.gptq_quantize_weight(w32, diag, spec, perm=perm, static_groups=True).tensors()[name],
                           t), name


@pytest.mark.parametrize("spec", ["int8", "int4-g32", "int4-g128"])
def test_act_order_cuts_the_error_when_input_scales_differ(spec):
    gen = torch.Generator().manual_seed(3)
    k = 256
    X = correlated_inputs(2000, k, gen) * torch.exp(torch.randn(k, generator=gen))
    w = torch.randn(64, k, generator=gen)
    H = X.T @ X
    perm = G.act_order_perm(H)
    layer = QuantLinear.from_quantized(G.gptq_quantize_weight(w, H, spec, perm=perm), in_perm=perm)
    with torch.no_grad():
        err_act = ((layer(X) - X @ w.T) ** 2).sum()
    dq = G.gptq_quantize_weight(w, H, spec).dequantize()
    err_plain = ((X @ (w - dq).T) ** 2).sum()
    assert err_act < 0.8 * err_plain, (err_act, err_plain)
    dq_static = G.gptq_quantize_weight(w, H, spec, perm=perm, static_groups=True).dequantize()
    err_static = ((X @ (w - dq_static).T) ** 2).sum()
    assert err_static < 0.8 * err_plain, (err_static, err_plain)
    # the layer's columns are gathered back into the model's order: float64 check of the forward
    x = torch.randn(5, k, generator=gen)
    dq_act = torch.empty_like(w, dtype=torch.float64)
    dq_act[:, perm] = layer.qw.dequantize().double()
    assert torch.equal(layer.dequantized_weight().double(), dq_act)
    with torch.no_grad():
        torch.testing.assert_close(layer(x).double(), x.double() @ dq_act.T, rtol=1e-5, atol=1e-4)


def test_act_order_bad_input():
    w, H = torch.randn(8, 64), torch.eye(64)
    with pytest.raises(ValueError, match="permutation"):
        G.gptq_quantize_weight(w, H, "int8", perm=torch.arange(63))
    with pytest.raises(ValueError, match="permutation"):
        G.gptq_quantize_weight(w, H, "int8", perm=torch.zeros(64, dtype=torch.long))
    with pytest.raises(ValueError, match="act_order needs method='gptq'"):
        pq.quantize_model(tiny_llama(), "int8", act_order=True)


def test_quantize_model_act_order_records_saves_and_loads(tmp_path, tokenizer):
    model = tiny_llama(seed=6)
    f64 = copy.deepcopy(model).double()
    ids = random_ids(2, 9)
    calib = [random_ids(1, 16)[0] for _ in range(3)]
    pq.quantize_model(model, "int4-g32", method="gptq", calibration=calib, damp=0.05, progress=False, act_order=True)
    cfg = model.pyquant_config
    assert cfg["gptq"]["act_order"] is True and cfg["gptq"]["attention_aware_v"] == 2
    assert all(info.get("in_perm") is True for info in cfg["layers"].values())
    v = model.model.layers[0].self_attn.v_proj
    assert v.in_perm is not None and not torch.equal(v.in_perm.long(), torch.arange(v.in_features))
    for name, q in quantized_layers(model).items():  # the float64 model of the weights, columns in place
        w = torch.empty(q.out_features, q.in_features, dtype=torch.float64)
        w[:, q.in_perm.long()] = q.qw.dequantize(torch.float64)
        f64.get_submodule(name).weight.data = w
    with torch.no_grad():
        y, want = model(ids).logits, f64(ids).logits
    assert (y.double() - want).abs().max() < 1e-4 * want.abs().max()
    pq.save_quantized(model, tmp_path / "q", tokenizer=tokenizer)
    loaded = pq.load_quantized(tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, y)
    assert loaded.pyquant_config["layers"]["model.layers.1.mlp.down_proj"]["in_perm"] is True
    out = loaded.generate(ids[:1, :4], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


def test_quantize_model_static_act_order_keeps_every_column_order(tmp_path, tokenizer):
    """act_order="static" (and INT8 layers under act_order=True): no in_perm anywhere; the logits
    are those of the float64 model of the dequantized weights; the model exports."""
    from pyquant.quant.export import export_compressed_tensors

    model = tiny_llama(seed=6)
    f64 = copy.deepcopy(model).double()
    ids = random_ids(2, 9)
    calib = [random_ids(1, 16)[0] for _ in range(3)]
    pq.quantize_model(model, "int4-g32", method="gptq", calibration=calib, damp=0.05, progress=False,
                      act_order="static")
    assert model.pyquant_config["gptq"]["act_order"] == "static"
    assert not any("in_perm" in info for info in model.pyquant_config["layers"].values())
    for name, q in quantized_layers(model).items():
        assert q.in_perm is None
        f64.get_submodule(name).weight.data = q.qw.dequantize(torch.float64)
    with torch.no_grad():
        y, want = model(ids).logits, f64(ids).logits
    assert (y.double() - want).abs().max() < 1e-4 * want.abs().max()
    export_compressed_tensors(model, tmp_path / "ct")
    int8 = tiny_llama(seed=6)
    pq.quantize_model(int8, "int8", method="gptq", calibration=calib, damp=0.05, progress=False, act_order=True)
    assert all(q.in_perm is None for q in quantized_layers(int8).values())
    with pytest.raises(ValueError, match="act_order must be False, True or 'static'"):
        pq.quantize_model(tiny_llama(), "int8", method="gptq", calibration=calib, act_order="weight")


def test_row_block_hessians_quantize_each_block_with_its_own(spec="int4-g32"):
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(12, 64, generator=gen, dtype=torch.float64)
    hs = torch.stack([(x.T @ x) for x in (correlated_inputs(200, 64, gen).double() for _ in range(3))])
    got = G.gptq_quantize_weight(w, hs, spec).dequantize()
    parts = [G.gptq_quantize_weight(w[4 * g:4 * g + 4], hs[g], spec).dequantize() for g in range(3)]
    assert torch.equal(got, torch.cat(parts))
    assert not torch.equal(got, G.gptq_quantize_weight(w, hs[0], spec).dequantize())
    with pytest.raises(ValueError, match="G dividing"):
        G.gptq_quantize_weight(w, hs[:0], spec)
    with pytest.raises(ValueError, match="G dividing"):
        G.gptq_quantize_weight(w, torch.stack([hs[0]] * 5), spec)


def test_quantize_model_gptq_records_saves_and_loads(tmp_path, tokenizer):
    model = tiny_llama(seed=4)
    calib = [random_ids(1, 16)[0] for _ in range(3)]
    pq.quantize_model(model, "int4-g32", overrides={"*down_proj": "int8"}, method="gptq", calibration=calib,
                      damp=0.05, progress=False)
    cfg = model.pyquant_config
    assert cfg["method"] == "gptq" and cfg["gptq"] == {"sequences": 3, "tokens": 48, "sequential_layers": 2,
                                                      "attention_aware_v": 2, "damp": 0.05, "block_size": 128,
                                                      "act_order": False}
    assert cfg["layers"]["model.layers.0.mlp.down_proj"] == {"spec": "int8", "shape": [64, 128], "bias": False,
                                                             "method": "gptq"}
    assert type(model.lm_head).__name__ == "Linear"
    assert isinstance(model.model.layers[1].self_attn.v_proj, QuantLinear)
    ids = random_ids(2, 9)
    with torch.no_grad():
        y = model(ids).logits
    pq.save_quantized(model, tmp_path / "q", tokenizer=tokenizer)
    loaded = pq.load_quantized(tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, y)
    assert loaded.pyquant_config["method"] == "gptq"


def test_gptq_on_conv1d_gpt2():
    model = tiny_gpt2()
    calib = [random_ids(1, 12)[0] for _ in range(2)]
    pq.quantize_model(model, "int4-g32", method="gptq", calibration=calib, progress=False)
    assert model.pyquant_config["gptq"]["sequential_layers"] == 2
    assert model.pyquant_config["gptq"]["attention_aware_v"] == 0  # fused c_attn: plain H
    assert isinstance(model.transformer.h[0].attn.c_attn, QuantLinear)
    out = model.generate(random_ids(1, 5), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 8)


def test_quantize_model_method_errors():
    with pytest.raises(ValueError, match="calibration"):
        pq.quantize_model(tiny_llama(), "int8", method="gptq")
    with pytest.raises(ValueError, match="method"):
        pq.quantize_model(tiny_llama(), "int8", method="awq")
    with pytest.raises(ValueError, match="damp"):
        pq.quantize_model(tiny_llama(), "int8", method="gptq", calibration=[random_ids(1, 8)[0]], damp=-0.1)
