"""Tokenizers and tiny text encoders for the tiny pipelines, built here in code (no download).

CLIP uses the real BPE vocabulary shipped with the package, so its words and pieces are real Stable Diffusion's.
Every other tokenizer is made from what this module learns, in the style of the real one:

- `bpe`: the one trained BPE, on the corpus and the pipelines' own template texts (so templates are whole words,
  as in real tokenizers); cut at spaces "▁"-style (Gemma) or byte-level ("Ġ": GLM, Qwen, Mistral, Llama);
- `t5_tokenizer`: a SentencePiece-style Unigram vocabulary written out ("▁" starts a word), as T5/UMT5;
- `bert_tokenizer`: a WordPiece vocabulary written out ("##" continues a word).

"hexagon" is in no training text: every tokenizer splits it into several pieces.
"""

from __future__ import annotations

import functools
import inspect
import json

from diffusers import SanaPipeline
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertTokenizer,
    CLIPTextConfig,
    CLIPTokenizer,
    GemmaTokenizer,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from crossattn.shapes.model import TOKENIZER_DIR

CORPUS = [
    "a photo of a cat to the left of a dog in a garden", "a red circle left of a blue square",
    "a small green triangle above a yellow circle", "a large cyan square right of a red triangle",
    "an oil painting of a horse below a bright moon at sunset", "two dogs and a cat on a white background",
    "a cyan circle left of a cyan square", "highly detailed, trending on artstation, 4k",
]
# The pipelines' own template texts: the BPE learns whole words from them, as real tokenizers have.
SANA_INSTRUCTION = "\n".join(inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default)
LUMINA_SYSTEM = ("You are an assistant designed to generate superior images with the superior degree of image-text "
                 "alignment based on textual prompts or user prompts. <Prompt Start> ")
TEMPLATES = [SANA_INSTRUCTION, LUMINA_SYSTEM, SYSTEM_MESSAGE, "system user assistant", "Describe the image by "
             "detailing the color, shape, size, texture, quantity, text, spatial relationships of the objects and "
             "background:"]
# Gemma's first (pad, eos, bos: ids 0, 1, 2 as in its config), then each other tokenizer's.
SPECIAL = ["<pad>", "<eos>", "<bos>", "<mask>", "<unk>", "<|endoftext|>", "[gMASK]", "<sop>", "<|im_start|>",
           "<|im_end|>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
           "<|begin_of_text|>", "<|eot_id|>"]
QWEN_CHAT = ("{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
             "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
             "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
             "{%- endif %}{%- endif %}")
MISTRAL_CHAT = ("{{ bos_token }}{%- for m in messages %}{%- if m['role'] == 'system' %}"
                "{{ '[SYSTEM_PROMPT]' + m['content'][0]['text'] + '[/SYSTEM_PROMPT]' }}"
                "{%- elif m['role'] == 'user' %}{{ '[INST]' + m['content'][0]['text'] + '[/INST]' }}{%- endif %}"
                "{%- endfor %}")


@functools.cache
def bpe(byte_level: bool) -> str:
    """The BPE trained on the corpus and templates, serialised (each tokenizer gets its own copy).

    Words are cut before training so that no merge spans two: byte-level ("Ġ" for a space), or at spaces with "▁"
    starting a word but never prepended (so "Prompt: " + "a" tokenises as "Prompt:" + "▁a", as Gemma does).
    """
    texts = CORPUS + TEMPLATES
    if byte_level:
        cut, alphabet = pre_tokenizers.ByteLevel(add_prefix_space=False), pre_tokenizers.ByteLevel.alphabet()
    else:
        cut = pre_tokenizers.Metaspace(prepend_scheme="never")
        letters = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        alphabet = sorted(set("".join(texts)) - {" "} | letters | {"▁"})
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = cut
    if byte_level:
        tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts * 3, trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIAL,
                                                           initial_alphabet=alphabet, show_progress=False))
    return tok.to_str()


def _byte_level(chat_template: str | None = None, first: tuple[str, ...] = (), **special) -> PreTrainedTokenizerFast:
    """The byte-level BPE as a transformers tokenizer that puts the tokens `first` before every text."""
    tok = Tokenizer.from_str(bpe(byte_level=True))
    if first:
        tok.post_processor = processors.TemplateProcessing(single=" ".join([*first, "$A"]),
                                                           special_tokens=[(t, tok.token_to_id(t)) for t in first])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    out.chat_template = chat_template
    return out


@functools.cache
def gemma_tokenizer() -> GemmaTokenizer:
    """Gemma style: <bos> first, no end token."""
    model = json.loads(bpe(byte_level=False))["model"]
    return GemmaTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], add_bos_token=True)


@functools.cache
def glm_tokenizer() -> PreTrainedTokenizerFast:
    """GLM-4 style: ``[gMASK] <sop>`` first; left padding with <|endoftext|>, also the end token."""
    return _byte_level(first=("[gMASK]", "<sop>"), pad_token="<|endoftext|>", eos_token="<|endoftext|>",
                       additional_special_tokens=["[gMASK]", "<sop>"], padding_side="left")


@functools.cache
def qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2.5-VL / Qwen3 style: no BOS, eos = <|im_end|> (the end of a turn), pad = <|endoftext|>."""
    tok = _byte_level(QWEN_CHAT, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                      extra_special_tokens=["<|im_start|>"])
    tok.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    return tok


@functools.cache
def mistral_tokenizer() -> PreTrainedTokenizerFast:
    """Mistral Small 3 style (what Flux.2's processor wraps): <s>, [SYSTEM_PROMPT]…[/SYSTEM_PROMPT][INST]…[/INST]."""
    return _byte_level(MISTRAL_CHAT, ("<s>",), bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                       extra_special_tokens=["[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"])


@functools.cache
def llama_tokenizer() -> PreTrainedTokenizerFast:
    """Llama 3.1 Instruct style: <|begin_of_text|> first, eos <|eot_id|> (HiDream pads with it)."""
    return _byte_level(first=("<|begin_of_text|>",), bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")


@functools.cache
def clip_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


@functools.cache
def t5_tokenizer() -> T5TokenizerFast:
    """A SentencePiece-style Unigram tokenizer ("▁" starts a word), ending every sequence with </s>.

    Most corpus words are one piece; "square" and "triangle" are two ("▁squ" + "are", "▁tri" + "angle"), and any
    other word falls back to letters: multi-piece words as real T5 makes them.
    """
    words = sorted({w for line in CORPUS for w in line.replace(",", " ").split()} - {"square", "triangle"})
    letters = sorted(set("".join(CORPUS).replace(" ", "")) | set("abcdefghijklmnopqrstuvwxyz0123456789"))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -5.0), (",", -3.0)]
    vocab += [(f"▁{w}", -2.0) for w in words] + [("▁squ", -2.5), ("are", -2.5), ("▁tri", -2.5), ("angle", -2.5)]
    vocab += [(f"▁{c}", -8.0) for c in letters] + [(c, -9.0) for c in letters]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)


@functools.cache
def bert_tokenizer() -> BertTokenizer:
    words = sorted({w for line in CORPUS for w in line.lower().replace(",", " ").split()})
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ".", "hex", "##agon"]
    pieces += words + list(letters) + [f"##{c}" for c in letters]
    return BertTokenizer(vocab={p: i for i, p in enumerate(dict.fromkeys(pieces))})


def text_config(**overrides) -> CLIPTextConfig:
    """A 2-layer CLIP text encoder over the real vocabulary."""
    base = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return CLIPTextConfig(**(base | overrides))


def tiny_t5(d_model: int = 32) -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer()), d_model=d_model, d_kv=8, d_ff=37, num_layers=2,
                                   num_heads=2, relative_attention_num_buckets=8))
