"""Build CLIPTokenizer files (vocab.json, merges.txt) from OpenAI's BPE merge list.

The merge list ships inside the ``open_clip_torch`` wheel as ``bpe_simple_vocab_16e6.txt.gz``;
this rebuilds the exact vocabulary that ``openai/clip-vit-large-patch14`` uses (start 49406,
end 49407, "a" = 320), so word/token handling behaves as on real Stable Diffusion, offline.

    pip download --no-deps open_clip_torch -d /tmp/oc && unzip -o /tmp/oc/*.whl 'open_clip/*.gz' -d /tmp/oc
    python scripts/build_clip_tokenizer.py /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz assets/clip-tokenizer
"""

import gzip
import json
import sys
from pathlib import Path


def bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level mapping: printable bytes map to themselves, the rest to unused code points.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def main(src: str, dst: str) -> None:
    lines = gzip.open(src, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # the slice OpenAI's CLIP uses
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"content": "<|endoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": {**special, "content": "<|startoftext|>"}, "eos_token": special,
                    "pad_token": special, "unk_token": special}, indent=2)
    )
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
                    "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                    "unk_token": "<|endoftext|>", "clean_up_tokenization_spaces": False}, indent=2)
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
