"""Reference store: round trip, memory-mapped reading, truncated / corrupted / incomplete files."""
import json
import os
import struct

import pytest
import torch

from pyquant.eval.store import ReferenceSequence, ReferenceStore


def random_store(lengths=(5, 2, 9), n=4, logprob_dtype="float32", seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(0, 2**31, ())))
    seqs = []
    for L in lengths:
        lp = torch.log_softmax(torch.randn(L - 1, 50, generator=g), -1).topk(n)
        seqs.append(ReferenceSequence(tokens=torch.randint(0, 50, (L,), generator=g), prompt_len=int(torch.randint(1, L + 1, (), generator=g)),
                                      top_ids=lp.indices.to(torch.int32), top_logprobs=lp.values,
                                      next_logprobs=torch.randn(L - 1, generator=g).abs().neg()))
    return seqs, ReferenceStore.from_sequences(seqs, {"top_n": n, "tokenizer_fingerprint": "abc"}, logprob_dtype)


def test_round_trip_exact(tmp_path):
    seqs, store = random_store()
    path = store.save(str(tmp_path / "r.pqref"))
    back = ReferenceStore.load(path)
    assert len(back) == len(seqs) == 3
    for i, s in enumerate(seqs):
        b = back[i]
        assert b.tokens.dtype == torch.int64 and torch.equal(b.tokens, s.tokens)
        assert b.prompt_len == s.prompt_len
        assert b.top_ids.dtype == torch.int32 and torch.equal(b.top_ids, s.top_ids)
        assert torch.equal(b.top_logprobs, s.top_logprobs) and torch.equal(b.next_logprobs, s.next_logprobs)
        assert b.top_ids.shape == (len(s) - 1, 4)
    assert torch.equal(back[-1].tokens, seqs[-1].tokens)
    with pytest.raises(IndexError):
        back[3]
    assert back.meta["checksum"].startswith("sha256:") and back.meta["complete"] is True
    assert back.tokenizer_fingerprint == "abc"
    # rows = 4 + 1 + 8 = 13; per row: N*(4 + 4) + 4 bytes, plus 8 bytes per token (16 tokens)
    assert back.num_rows == 13
    assert back.nbytes == 13 * (4 * 8 + 4) + 16 * 8
    assert back._mmap is not None  # memory-mapped, not read into memory


def test_float16_logprobs(tmp_path):
    seqs, store = random_store(logprob_dtype="float16")
    back = ReferenceStore.load(store.save(str(tmp_path / "r.pqref")))
    for i, s in enumerate(seqs):
        assert back[i].top_logprobs.dtype == torch.float16
        torch.testing.assert_close(back[i].top_logprobs.float(), s.top_logprobs, rtol=1e-3, atol=1e-3)
    assert back.bytes_per_token < ReferenceStore.load(random_store()[1].save(str(tmp_path / "b.pqref"))).bytes_per_token


def test_truncated_file(tmp_path):
    path = random_store()[1].save(str(tmp_path / "r.pqref"))
    data = open(path, "rb").read()
    for cut in (len(data) - 1, len(data) // 2, 20, 3):
        p = tmp_path / f"cut{cut}.pqref"
        p.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated|not a pyquant"):
            ReferenceStore.load(str(p))


def test_corrupted_file(tmp_path):
    path = random_store()[1].save(str(tmp_path / "r.pqref"))
    data = bytearray(open(path, "rb").read())
    data[-5] ^= 0xFF
    p = tmp_path / "bad.pqref"
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        ReferenceStore.load(str(p))
    ReferenceStore.load(str(p), verify=False)  # the structure itself is intact


def _rewrite_meta(path, out, **changes):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"]["pyquant"])
    meta.update(changes)
    header["__metadata__"]["pyquant"] = json.dumps(meta)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    open(out, "wb").write(struct.pack("<Q", len(hb)) + hb + data[8 + n:])


def test_incomplete_or_foreign_file(tmp_path):
    path = random_store()[1].save(str(tmp_path / "r.pqref"))
    _rewrite_meta(path, tmp_path / "inc.pqref", complete=False)
    with pytest.raises(ValueError, match="incomplete"):
        ReferenceStore.load(str(tmp_path / "inc.pqref"))
    _rewrite_meta(path, tmp_path / "new.pqref", version=99)
    with pytest.raises(ValueError, match="newer"):
        ReferenceStore.load(str(tmp_path / "new.pqref"))
    (tmp_path / "junk.pqref").write_bytes(os.urandom(64))
    with pytest.raises(ValueError):
        ReferenceStore.load(str(tmp_path / "junk.pqref"))


def test_inconsistent_sequences_rejected():
    seqs, _ = random_store()
    bad = ReferenceSequence(seqs[0].tokens, seqs[0].prompt_len, seqs[0].top_ids[:-1], seqs[0].top_logprobs, seqs[0].next_logprobs)
    with pytest.raises(ValueError, match="inconsistent"):
        ReferenceStore.from_sequences([bad], {"top_n": 4})
    with pytest.raises(ValueError, match="logprob_dtype"):
        ReferenceStore.from_sequences(seqs, {"top_n": 4}, "bfloat16")


def test_tokenizer_check():
    _, store = random_store()
    store.check_tokenizer("abc")
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        store.check_tokenizer("abd")
