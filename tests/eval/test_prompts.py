"""Reading prompt sets and texts; chat prompts through the chat template."""
import copy
import json

import pytest

from pyquant.eval.prompts import encode_prompt, read_prompts, read_texts


def test_jsonl_and_plain_prompts(tmp_path):
    p = tmp_path / "p.jsonl"
    msgs = [{"role": "user", "content": "hi there"}]
    p.write_text(json.dumps({"prompt": "hello"}) + "\n\n" + json.dumps({"messages": msgs}) + "\n")
    assert read_prompts(str(p)) == ["hello", msgs]
    t = tmp_path / "p.txt"
    t.write_text("first prompt\n\n  second prompt\n")
    assert read_prompts(str(t)) == ["first prompt", "  second prompt"]


@pytest.mark.parametrize("content,msg", [("", "no prompts"), ("\n  \n", "no prompts"),
                                         ('{"text": "x"}\n', "prompt"), ('{"prompt": "a"}\nnot json\n', "not valid JSON"),
                                         ('{"messages": [{"role": "user"}]}\n', "content")])
def test_bad_prompt_files(tmp_path, content, msg):
    p = tmp_path / "p.jsonl"
    p.write_text(content)
    with pytest.raises(ValueError, match=msg):
        read_prompts(str(p))


def test_errors_name_the_file_line_counting_blank_lines(tmp_path):
    """An editor's line numbers: blank lines count (they were skipped, so the 4th line read as the 2nd)."""
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "a"}\n\n\n{"prompt": "b"\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:4: not valid JSON"):
        read_prompts(str(p))
    p.write_text('{"prompt": "a"}\n\n{"other": 1}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:3: expected a non-empty 'prompt'"):
        read_prompts(str(p))
    t = tmp_path / "t.jsonl"
    t.write_text('{"text": "a"}\n\n{"text": 3}\n')
    with pytest.raises(ValueError, match=r"t\.jsonl:3: expected a 'text' string"):
        read_texts([str(t)])


def test_chat_prompt_uses_template(tok):
    t = copy.deepcopy(tok)
    t.chat_template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    msgs = [{"role": "user", "content": "hello world"}]
    ids = encode_prompt(t, msgs)
    assert t.decode(ids) == "<s>user: hello world\nassistant:"
    assert encode_prompt(t, "hello") == t("hello")["input_ids"]
    with pytest.raises(ValueError, match="chat template"):
        encode_prompt(tok, msgs)


def test_read_texts(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.jsonl"
    a.write_text("one document\nwith two lines\n")
    b.write_text(json.dumps({"text": "doc two"}) + "\n" + json.dumps({"text": "doc three"}) + "\n")
    assert read_texts([str(a), str(b)]) == ["one document\nwith two lines\n", "doc two", "doc three"]
    (tmp_path / "e.txt").write_text("  \n")
    with pytest.raises(ValueError, match="no texts"):
        read_texts([str(tmp_path / "e.txt")])
