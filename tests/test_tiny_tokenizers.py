"""Tiny offline tokenizers: special-token layout, determinism, round trips, save/reload."""

from __future__ import annotations

from transformers import AutoTokenizer

from dcft_lab.tiny_tokenizers import TINY_VOCAB_SIZE, tiny_bart_tokenizer, tiny_deberta_tokenizer


def test_tiny_bart_layout_and_round_trip(tmp_path):
    tokenizer = tiny_bart_tokenizer()
    assert tokenizer.is_fast and len(tokenizer) <= TINY_VOCAB_SIZE
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2, 3)
    text = "Zürich's £80m plan — approved!"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # byte-level: nothing is lost
    assert tokenizer.unk_token_id not in ids
    saved = tiny_bart_tokenizer(save_dir=tmp_path)
    assert saved is not tokenizer  # fresh wrapper per call, same vocabulary
    assert AutoTokenizer.from_pretrained(str(tmp_path))(text)["input_ids"] == ids


def test_tiny_deberta_layout_pairs_and_offsets():
    tokenizer = tiny_deberta_tokenizer()
    assert tokenizer.is_fast and len(tokenizer) <= TINY_VOCAB_SIZE
    assert [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
            tokenizer.mask_token_id] == [0, 1, 2, 3, 4]
    encoded = tokenizer("Who won?", "The Denver Broncos won.", return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and tokens.count("[SEP]") == 2
    first_sep = tokens.index("[SEP]")
    assert encoded["token_type_ids"] == [0] * (first_sep + 1) + [1] * (len(tokens) - first_sep - 1)
    assert encoded.sequence_ids()[first_sep + 1] == 1
    context = "The Denver Broncos won."
    pieces = [context[s:e] for (s, e), seq in zip(encoded["offset_mapping"], encoded.sequence_ids()) if seq == 1]
    assert "".join(pieces).lower() == context.replace(" ", "").lower()
    assert tiny_deberta_tokenizer()("Who won?")["input_ids"] == tokenizer("Who won?")["input_ids"]


def test_builds_are_identical_across_processes():
    # Rust hash maps are seeded per process: tie-breaking that depends on them would show up here.
    import subprocess
    import sys

    from dcft_lab.tiny_tokenizers import _bart_tokenizer_json, _wordpiece_tokenizer_json

    code = ("from dcft_lab.tiny_tokenizers import _bart_tokenizer_json as b, _wordpiece_tokenizer_json as w\n"
            "import sys; sys.stdout.write(b() + '\\n' + w())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert other == _bart_tokenizer_json() + "\n" + _wordpiece_tokenizer_json()
