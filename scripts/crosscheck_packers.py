"""Cross-check pyquant/quant/checkpoints.py against the packers of the tools that write the formats.

The unit tests (tests/quant/test_checkpoints.py) write checkpoints with packers spelled out in the
test itself, and with the compressed-tensors library when it is installed. This script adds the
other two writers, which are not installable here as packages (they need CUDA builds and older
torch): it downloads the sources of AutoGPTQ 0.7.1 and AutoAWQ 0.2.9 with ``pip download
--no-deps``, loads only their pure-PyTorch layer modules, packs weights with their own ``pack`` /
``from_linear``, and checks that pyquant's reader gives back exactly the weights they encoded.

    .venv/bin/python scripts/crosscheck_packers.py [--dir /tmp/pyquant-packers]
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import logging
import os
import subprocess
import sys
import tarfile
import warnings
import zipfile

import torch

SOURCES = {"auto-gptq==0.7.1": "auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py",
           "autoawq==0.2.9": "awq/modules/linear/gemm.py"}


def _fetch(requirement: str, path: str, where: str):
    """The module ``path`` of ``requirement``'s wheel or sdist, downloaded into ``where`` and loaded alone."""
    target = os.path.join(where, requirement.replace("==", "-"))
    if not glob.glob(os.path.join(target, "**", path), recursive=True):
        os.makedirs(target, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", target, requirement],
                       check=True)
        for f in glob.glob(os.path.join(target, "*")):
            if f.endswith(".whl"):
                zipfile.ZipFile(f).extractall(target)
            elif f.endswith(".tar.gz"):
                with tarfile.open(f) as t:
                    t.extractall(target, filter="data")
    found = glob.glob(os.path.join(target, "**", path), recursive=True)
    sys.path.insert(0, found[0][: -len(path)])  # its package's own imports (AutoAWQ's gemm.py imports awq.utils)
    spec = importlib.util.spec_from_file_location(requirement.split("==")[0].replace("-", "_"), found[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _grid(w: torch.Tensor, bits: int, gs: int, sym: bool, min_zero: int):
    """Scales (fp16-representable) and zero-points [N, ng] from each group's range, and the weight
    rounded onto that grid (the pseudo-quantized weight both tools pack)."""
    n, k = w.shape
    wg = w.reshape(n, k // gs, gs)
    maxq = 2 ** bits - 1
    if sym:
        s = (wg.abs().amax(-1) * 2 / maxq).half().float()
        z = torch.full_like(s, (maxq + 1) // 2)
    else:
        s = ((wg.amax(-1) - wg.amin(-1)) / maxq).half().float()
        z = (-torch.round(wg.amin(-1) / s)).clamp(min_zero, maxq)
    sf, zf = s.repeat_interleave(gs, 1), z.repeat_interleave(gs, 1)
    return s, z, (torch.clamp(torch.round(w / sf) + zf, 0, maxq) - zf) * sf


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/pyquant-packers", help="where the sources are downloaded")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from pyquant.quant.checkpoints import convert_awq_layer, convert_gptq_layer

    torch.manual_seed(0)
    gptq = _fetch("auto-gptq==0.7.1", SOURCES["auto-gptq==0.7.1"], args.dir)
    awq = _fetch("autoawq==0.2.9", SOURCES["autoawq==0.2.9"], args.dir)
    worst = 0.0
    for bits, k, n, g, sym in [(4, 256, 64, 128, False), (4, 512, 32, 64, True), (4, 256, 32, 32, False),
                               (8, 256, 32, -1, True)]:
        lin = torch.nn.Linear(k, n)
        s, z, w = _grid(lin.weight.data, bits, k if g == -1 else g, sym, min_zero=1)  # v1 stores zero - 1
        lin.weight.data = w
        q = gptq.QuantLinear(bits, g, k, n, True)
        q.pack(lin, s.clone(), z.clone(), torch.arange(k) // (k if g == -1 else g))
        qw, _ = convert_gptq_layer({"qweight": q.qweight, "qzeros": q.qzeros, "scales": q.scales, "g_idx": q.g_idx},
                                   bits, g, k, n)
        err = (qw.dequantize(torch.float32) - w).abs().max().item()
        worst = max(worst, err)
        print(f"AutoGPTQ 0.7.1 pack  {bits}-bit K={k} N={n} G={g} {'sym ' if sym else 'asym'} -> {qw.spec}: "
              f"max |pyquant - packed weight| = {err:.3g}")
    for k, n, g in [(256, 64, 128), (512, 32, 64), (256, 32, 32)]:
        lin = torch.nn.Linear(k, n, bias=False)
        s, z, w = _grid(lin.weight.data, 4, g, False, min_zero=0)
        lin.weight.data = w
        q = awq.WQLinear_GEMM.from_linear(lin, 4, g, scales=s.t().contiguous(), zeros=z.t().contiguous())
        qw = convert_awq_layer({"qweight": q.qweight, "qzeros": q.qzeros, "scales": q.scales}, g, k, n)
        err = (qw.dequantize(torch.float32) - w).abs().max().item()
        worst = max(worst, err)
        print(f"AutoAWQ 0.2.9 GEMM   4-bit K={k} N={n} G={g} asym -> {qw.spec}: max |pyquant - packed weight| = {err:.3g}")
    print("all exact" if worst == 0 else f"MISMATCH: {worst}")
    return 0 if worst == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
