"""A mixture-of-experts model's forward: full precision (transformers' default experts
implementation) against pyquant's quantized experts (pyquant/quant/experts.py), side by side.

A random Mixtral-shaped model (8 experts, top 2; --hidden, --inter, --layers) in float32, quantized
copies in int4-g128 and int8 (every linear layer and expert; the LM head too). Each forward runs
T tokens (no KV cache), timed in interleaved rounds (bench/_timing.py); medians and the speed-up
over float32 are printed, with the weights' bytes.

--arch llama4: a Llama-4-shaped model (16 experts, top 1, a shared expert). transformers runs its
experts densely (every expert on every token, the unrouted ones on zeros), pyquant's forward only
on the routed rows, so the row "float32-routed" (the float32 experts through pyquant's forward)
separates what routing saves from what quantization does.

    python bench/moe_experts.py                      # hidden 1024, inter 2816, 4 layers; T = 1 and 128
    python bench/moe_experts.py --tokens 1,512 --rounds 9
    python bench/moe_experts.py --arch llama4 --experts 16
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import interleaved_medians  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="mixtral", choices=("mixtral", "llama4"))
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--inter", type=int, default=2816, help="each expert's intermediate size")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--tokens", default="1,128", help="comma-separated tokens per forward")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch
    import transformers

    import pyquant as pq
    from pyquant.models import model_description

    torch.manual_seed(0)
    shape = dict(vocab_size=1000, hidden_size=args.hidden, intermediate_size=args.inter, num_hidden_layers=args.layers,
                 num_attention_heads=max(1, args.hidden // 64), num_key_value_heads=max(1, args.hidden // 256),
                 num_local_experts=args.experts, max_position_embeddings=4096)
    if args.arch == "llama4":
        cfg = transformers.Llama4TextConfig(**shape, num_experts_per_tok=1, intermediate_size_mlp=args.inter,
                                            interleave_moe_layer_step=1, head_dim=64)
        float32 = transformers.Llama4ForCausalLM(cfg).eval()
    else:
        float32 = transformers.MixtralForCausalLM(transformers.MixtralConfig(**shape, num_experts_per_tok=2)).eval()
    models = {"float32": float32}
    if args.arch == "llama4":
        from pyquant.quant.experts import is_pre_weighted, use_pyquant_experts

        models["float32-routed"] = copy.deepcopy(float32)
        for m in models["float32-routed"].modules():
            if is_pre_weighted(m):
                use_pyquant_experts(m)
    for spec in ("int4-g128", "int8"):
        models[spec] = pq.quantize_model(copy.deepcopy(float32), spec, skip=())
    impl = ("its dense bmm over every expert" if args.arch == "llama4"
            else f"transformers' {float32.config._experts_implementation!r} implementation")
    print(f"{args.arch}-shaped: hidden {args.hidden}, experts {args.experts} x {args.inter}, {args.layers} layers; "
          f"float32 experts run by {impl}; {torch.get_num_threads()} threads")
    print("weights: " + ", ".join(f"{k} {model_description(m)['weight_bytes'] / 2**20:.1f} MiB" for k, m in models.items()))
    if "float32-routed" in models:  # the same arithmetic on fewer rows: the logits agree
        ids = torch.randint(0, 1000, (1, 8))
        with torch.no_grad():
            a, b = (models[k](ids, use_cache=False).logits for k in ("float32", "float32-routed"))
        print(f"float32-routed vs float32: max |logit difference| {(a - b).abs().max().item():.2e}")
    for t in (int(x) for x in args.tokens.split(",")):
        ids = torch.randint(0, 1000, (1, t))
        cands = {k: (lambda i, m=m: m(ids, use_cache=False)) for k, m in models.items()}
        with torch.no_grad():
            res = interleaved_medians(cands, 1, rounds=args.rounds, warmup=1)
        base = res["float32"]["median_s"]
        print(f"T={t:<5} " + "   ".join(f"{k} {r['median_s'] * 1e3:8.2f} ms ({base / r['median_s']:.2f}x)"
                                         for k, r in res.items()))


if __name__ == "__main__":
    main()
