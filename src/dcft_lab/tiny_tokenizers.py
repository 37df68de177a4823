"""Tiny fast tokenizers built offline, for tests and smoke runs with tiny random models.

Real checkpoints' vocabularies (50k BART, 128k DeBERTaV3) would dominate the size of a tiny model, and the hubs are
unreachable here, so we build <=1000-token vocabularies from a fixed built-in corpus with the `tokenizers` library.
Both builds are deterministic (checked across processes in the tests); the tokenizer JSON is cached in memory and
each call returns a fresh `PreTrainedTokenizerFast` (callers may change padding side etc. without affecting others).
"""

from __future__ import annotations

import collections
import functools
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

TINY_VOCAB_SIZE = 1000

# A fixed, varied English corpus: news-like prose (for summarization) and encyclopedia-like prose (for QA).
_CORPUS = """
The owners said their planned development at the site would create between 300 and 500 jobs.
The district council granted planning permission for the water park, including seven slides.
Some people living in the town have raised concerns about traffic congestion and the environment.
The managing director said the whole idea of creating a destination is for people to stay longer.
Police are appealing for witnesses after a man was injured in a crash on the main road on Sunday night.
The government has announced new funding for schools and hospitals across the country.
Scientists have discovered a new species of frog in the rainforest of South America.
The team won the championship final after a dramatic penalty shoot-out in front of 40,000 fans.
Prices rose by 2.5% in the year to March, according to the Office for National Statistics.
The company reported a profit of 1.2 billion pounds, up from 900 million a year earlier.
Super Bowl 50 was an American football game to determine the champion of the National Football League.
The Denver Broncos defeated the Carolina Panthers 24 to 10 to earn their third Super Bowl title.
The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area.
Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France.
The Amazon rainforest covers much of the Amazon basin of South America, about seven million square kilometres.
Oxygen is a chemical element with symbol O and atomic number 8; it is a member of the chalcogen group.
The university was founded in 1891 and is one of the oldest research institutions in the state.
Who won the game? When was it played? Where is the stadium? What is the name of the region? How many jobs?
Why did the council agree? Which team scored first? What did the report say about prices and profits?
The cat sat on the mat. The dog ran in the park. A bird sang in the tree near the river.
Economic growth slowed in the third quarter as exports fell and consumer spending weakened.
The minister said the decision was taken after a long review of the evidence from independent experts.
Hundreds of people gathered outside the building to protest against the closure of the library.
The museum will reopen next month after a two-year renovation costing 15 million dollars.
Heavy rain caused flooding in several villages, and residents were moved to temporary shelters.
The film, which was released in 1999, became one of the highest-grossing films of all time.
Engineers are testing a new train that can travel at speeds of up to 400 kilometres per hour.
Doctors warned that the number of patients waiting for treatment had reached a record high.
The election results will be announced on Friday morning, officials said in a statement.
Researchers found that children who read every day performed better in mathematics and science.
"""


def _corpus_lines() -> list[str]:
    return [line.strip() for line in _CORPUS.strip().splitlines() if line.strip()]


@functools.cache
def _bart_tokenizer_json() -> str:
    # Byte-level BPE like BART/RoBERTa: any text encodes (no <unk>), offsets are exact.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # BART's id order: bos 0, pad 1, eos 2, unk 3
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    # BART wraps a single text as "<s> text </s>" (pairs: "<s> a </s></s> b </s>").
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=False)
    return tok.to_str()


@functools.cache
def _wordpiece_tokenizer_json() -> str:
    # BERT/DeBERTa-style: lowercase WordPiece with [CLS] a [SEP] b [SEP] and token type ids. The tokenizers
    # WordPieceTrainer breaks ties differently from run to run, so the vocabulary is built here instead: special
    # tokens, every printable ASCII character alone and as a "##" continuation (so any word can be spelled out),
    # then the corpus's words by descending frequency (ties alphabetical).
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = collections.Counter(
        word for line in _corpus_lines() for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))
    )
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    alphabet = [chr(code) for code in range(33, 127)]
    tokens = special + alphabet + ["##" + char for char in alphabet]
    known = set(tokens)
    tokens += [word for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if word not in known]
    vocab = {token: index for index, token in enumerate(tokens[:TINY_VOCAB_SIZE])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    for token in special:  # so they are matched whole in raw text and skipped when decoding
        tok.add_special_tokens([token])
    return tok.to_str()


def _wrap(tokenizer_json: str, save_dir: str | Path | None, **special_tokens) -> PreTrainedTokenizerFast:
    wrapped = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json), **special_tokens)
    if save_dir is not None:
        wrapped.save_pretrained(str(save_dir))
    return wrapped


def tiny_bart_tokenizer(save_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Byte-level BPE (~1000 tokens) with BART's special tokens: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>."""
    return _wrap(_bart_tokenizer_json(), save_dir, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                 unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>",
                 model_input_names=["input_ids", "attention_mask"])


def tiny_deberta_tokenizer(save_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Lowercase WordPiece (~1000 tokens), [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4; pairs get token_type_ids."""
    return _wrap(_wordpiece_tokenizer_json(), save_dir, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                 unk_token="[UNK]", mask_token="[MASK]",
                 model_input_names=["input_ids", "token_type_ids", "attention_mask"])


# ---- decoder-only (causal LM) tokenizers: GPT-2 / Llama / Qwen2 special-token conventions ------------------------
# (special tokens in id order, what a single text is wrapped in, pad token or None). Real GPT-2 and Llama tokenizers
# have no pad token (backbones.prepare_decoder_tokenizer then pads with EOS); Qwen2.5 pads with <|endoftext|>.
_DECODER_FLAVORS = {
    "gpt2": (("<|endoftext|>",), None, None),  # bos = eos = unk = <|endoftext|>; nothing added to a text
    "llama": (("<unk>", "<s>", "</s>"), "<s>", None),  # Llama's ids: unk 0, bos 1, eos 2; "<s> text" (BOS only)
    "qwen2": (("<|endoftext|>", "<|im_start|>", "<|im_end|>"), None, "<|endoftext|>"),  # no BOS; pad = eos
}


@functools.cache
def _decoder_tokenizer_json(flavor: str) -> str:
    specials, bos, _ = _DECODER_FLAVORS[flavor]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB_SIZE, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    if bos is not None:  # Llama: BOS before every text (and before each text of a pair), never EOS
        bos_id = specials.index(bos)
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
                                                           special_tokens=[(bos, bos_id)])
    return tok.to_str()


def tiny_decoder_tokenizer(flavor: str, save_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Byte-level BPE (~1000 tokens) with the special tokens of a decoder-only family: ``gpt2`` (<|endoftext|>
    = bos = eos = unk, no pad), ``llama`` (<unk> 0, <s> 1 added before each text, </s> 2, no pad) or ``qwen2``
    (<|endoftext|> = eos = pad, <|im_start|>, <|im_end|>, no BOS)."""
    if flavor not in _DECODER_FLAVORS:
        raise ValueError(f"unknown tiny decoder tokenizer {flavor!r}; expected one of {sorted(_DECODER_FLAVORS)}")
    specials, bos, pad = _DECODER_FLAVORS[flavor]
    if flavor == "gpt2":
        tokens = dict(bos_token=specials[0], eos_token=specials[0], unk_token=specials[0])
    elif flavor == "llama":
        tokens = dict(unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    else:
        tokens = dict(eos_token="<|endoftext|>", pad_token=pad, additional_special_tokens=list(specials[1:]))
    # a name of its own: GLUE's tokenized-data cache is keyed by the tokenizer's name, class and size
    return _wrap(_decoder_tokenizer_json(flavor), save_dir, name_or_path=f"dcft_lab/tiny-{flavor}",
                 model_input_names=["input_ids", "attention_mask"], **tokens)
