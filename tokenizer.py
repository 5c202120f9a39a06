"""Tokenizers read from a checkpoint's own files, never from the network.

gpt2-bpe:       GPT-2's byte-level BPE (encoder.json + vocab.bpe) through tiktoken.
sentencepiece:  LLaMA / llama2.c tokenizer.model through sentencepiece.
tokenizer.json: a Hugging Face tokenizer (LLaMA-3, Qwen2.5, SmolLM2: byte-level BPE, each with its own
                pre-tokenizer rules) through the `tokenizers` library, the one that defines the format.

Text encodes to ordinary tokens: a special token written in a document ("<|endoftext|>") is text, as
tiktoken's encode_ordinary has it. encode(special=True) reads them as the tokens they name: a prompt
written in a chat template.

Text never encodes to the mask token. Released checkpoints sometimes reuse an ordinary
token as the mask (DiffuGPT-S: 10541 = "------------", DiffuLLaMA: 811 = "ти"); where text
would produce it, we spell the same bytes with smaller tokens instead.

find_tokenizer and read_vocabulary find a model directory's tokenizer files and read their vocabulary
(convert.py), before any checkpoint exists.
"""

import hashlib
import json
from pathlib import Path

from checkpoint import read_meta
from support.cli import UserError

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_FILES = ["encoder.json", "vocab.bpe"]
SENTENCEPIECE_FILES = ["tokenizer.model"]
HF_TOKENIZER_FILES = ["tokenizer.json"]
MASK_GLYPH = "█"


def gpt2_byte_decoder():
    """GPT-2 stores byte-level tokens as printable unicode strings: map each char back to its byte."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(others)}


class Tokenizer:
    def __init__(self, directory, meta):
        directory, spec = Path(directory), meta["tokenizer"]
        self.kind = spec["type"]
        self.mask_id, self.bos_id, self.eos_id = meta["mask_token_id"], meta.get("bos_token_id"), meta["eos_token_id"]
        if self.kind == "gpt2-bpe":
            import tiktoken

            byte_of = gpt2_byte_decoder()
            try:
                encoder = json.loads((directory / "encoder.json").read_text())
            except (OSError, ValueError) as e:
                raise UserError(f"cannot read GPT-2 vocabulary {directory / 'encoder.json'}: {e}") from None
            eot = encoder.pop("<|endoftext|>", None)
            # GPT-2's token ids are its merge ranks, which is what tiktoken needs.
            ranks = {bytes(byte_of[c] for c in token): i for token, i in encoder.items()}
            specials = {"<|endoftext|>": eot} if eot is not None else {}
            self.enc = tiktoken.Encoding(
                "gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials
            )
            self.n_vocab = self.enc.n_vocab
        elif self.kind == "sentencepiece":
            import sentencepiece

            file = directory / "tokenizer.model"
            try:
                self.sp = sentencepiece.SentencePieceProcessor(model_file=str(file))
            except (OSError, RuntimeError) as e:
                raise UserError(f"cannot load SentencePiece model {file}: {e}") from None
            self.n_vocab = self.sp.get_piece_size()
        elif self.kind == "tokenizer.json":
            self.hf = read_tokenizer_json(directory / "tokenizer.json")
            self.n_vocab = self.hf.get_vocab_size(with_added_tokens=True)
        else:
            raise UserError(f"unknown tokenizer type {self.kind!r}")
        self.mask_spelling = self._respell(self.mask_id) if self.mask_id < self.n_vocab else None

    def _respell(self, token):
        """The same text as `token`, in tokens other than it."""
        if self.kind == "gpt2-bpe":  # every single byte is a GPT-2 token
            return [self.enc.encode_single_token(bytes([b])) for b in self.enc.decode_single_token_bytes(token)]
        if self.kind == "tokenizer.json":  # byte-level BPE: each character of a token stands for a byte, a token too
            piece = self.hf.id_to_token(token) or ""
            ids = [self.hf.token_to_id(c) for c in piece]
            if not piece or None in ids or token in ids:
                raise UserError(f"the mask token {token} cannot be spelled another way by this tokenizer")
            return ids
        ids = []
        for ch in self.sp.id_to_piece(token):
            i = self.sp.piece_to_id(ch)
            if i == self.sp.unk_id() or i == token:  # byte fallback, as LLaMA's tokenizer has
                i = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in ch.encode()]
                if self.sp.unk_id() in i:
                    raise UserError(f"the mask token {token} cannot be spelled another way by this tokenizer")
                ids += i
            else:
                ids.append(i)
        return ids

    def encode(self, text, bos=False, special=False):
        """Text -> token ids, never containing the mask token; with bos=True [BOS] first (if there is one);
        special=True: the special tokens written in the text ("<|im_start|>") become those tokens."""
        if self.kind == "gpt2-bpe":
            ids = self.enc.encode(text, allowed_special="all") if special else self.enc.encode_ordinary(text)
        elif self.kind == "tokenizer.json":
            self.hf.encode_special_tokens = not special
            ids = self.hf.encode(text, add_special_tokens=False).ids
        else:  # SentencePiece has no special tokens in text
            ids = self.sp.encode(text)
        if self.mask_spelling is not None and self.mask_id in ids:
            ids = [j for i in ids for j in (self.mask_spelling if i == self.mask_id else [i])]
        return ([self.bos_id] if bos and self.bos_id is not None else []) + ids

    def encode_continuation(self, context, continuation):
        """(context ids, continuation ids) with the continuation tokenized as it follows the context.

        Together they are encode(context + continuation), split where encode(context) stops matching:
        a word's ids as they appear inside its passage, as the official scripts take them
        (encode(passage) minus encode(context)). Encoding " Lily" alone would not do for SentencePiece:
        it puts a stray "▁" (LLaMA-2: id 29871) in front of the word's own tokens.
        """
        whole, head = self.encode(context + continuation), self.encode(context)
        n = 0
        while n < min(len(whole), len(head)) and whole[n] == head[n]:
            n += 1
        return whole[:n], whole[n:]

    def encode_suffix(self, prompt, suffix):
        """A suffix that starts with a space, as it follows text (SentencePiece would put a stray "▁" before
        it on its own); one that does not, on its own, as a new word. Never at the cost of the prompt's ids."""
        if suffix[:1].isspace():
            head, ids = self.encode_continuation(prompt, suffix)
            if head == self.encode(prompt):
                return ids
        return self.encode(suffix)

    def encode_document(self, text):
        """A document as stored for training: [BOS] tokens [EOS], or tokens [EOS] where BOS is EOS (GPT-2)."""
        head = [self.bos_id] if self.bos_id is not None and self.bos_id != self.eos_id else []
        return head + self.encode(text) + [self.eos_id]

    def decode(self, ids, show_masks=False):
        """Token ids -> text. The mask token is drawn as MASK_GLYPH (show_masks) or not at all; ids the tokenizer
        lacks are dropped."""
        text, run = [], []
        for i in ids:
            if i == self.mask_id or not 0 <= i < self.n_vocab:
                text.append(self._decode_run(run))
                run = []
                if i == self.mask_id and show_masks:
                    text.append(MASK_GLYPH)
            else:
                run.append(i)
        text.append(self._decode_run(run))
        return "".join(text)

    def render(self, prefix, generated, suffix=()):
        """Text of one sample: prompt, generated part up to its first EOS, suffix, decoded in one pass
        (SentencePiece drops a piece's leading space at the start of a decode: decoded apart, words glue)."""
        prompt = [i for i in prefix if i != self.bos_id]
        return self.decode(prompt + until_eos(generated, self.eos_id) + list(suffix))

    def _decode_run(self, ids):
        if not ids:
            return ""
        if self.kind == "gpt2-bpe":
            return self.enc.decode(ids, errors="replace")
        if self.kind == "tokenizer.json":
            return self.hf.decode(ids, skip_special_tokens=False)
        return self.sp.decode(ids)


def until_eos(generated, eos_id):
    """The generated ids before the first EOS (the rest is dropped: the model ended the text there)."""
    return generated[: generated.index(eos_id)] if eos_id in generated else generated


def read_tokenizer_json(file):
    """A Hugging Face tokenizer.json, through `tokenizers` (optional: only these checkpoints need it)."""
    try:
        import tokenizers
    except ImportError:
        raise UserError("a tokenizer.json needs the tokenizers library: pip install tokenizers") from None
    try:
        return tokenizers.Tokenizer.from_file(str(file))
    except Exception as e:  # the library raises plain Exceptions for unreadable files
        raise UserError(f"cannot read {file}: {str(e).splitlines()[0]}") from None


def load_tokenizer(path, meta=None):
    return Tokenizer(path, meta or read_meta(path))


def fingerprint(path, meta):
    """A hash of the tokenizer files: data and checkpoint must agree on it, not only on vocabulary size."""
    h = hashlib.sha256(meta["tokenizer"]["type"].encode())
    for name in sorted(meta["tokenizer"]["files"]):
        h.update((Path(path) / name).read_bytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Finding a model directory's tokenizer files (convert.py)


def find_tokenizer(path, gpt2=False):
    """-> (meta["tokenizer"], {name in checkpoint: source file}) or None if path holds none.

    A tokenizer.json holds the whole definition (Qwen2's and LLaMA-3's own pre-tokenizer rules), so it wins
    over the vocab.json + merges.txt beside it, which would be read with GPT-2's rules; except for GPT-2
    itself (gpt2=True), whose own files tiktoken reads. LLaMA-2's tokenizer.model wins over its tokenizer.json.
    """
    path = Path(path)
    if path.is_file():
        return {"type": "sentencepiece", "files": SENTENCEPIECE_FILES}, {"tokenizer.model": path}
    found = {}
    for enc, bpe in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):  # the same data, two names
        if (path / enc).is_file() and (path / bpe).is_file():
            found["gpt2-bpe"] = {"encoder.json": path / enc, "vocab.bpe": path / bpe}
            break
    for name, kind in (("tokenizer.model", "sentencepiece"), ("tokenizer.json", "tokenizer.json")):
        if (path / name).is_file():
            found[kind] = {name: path / name}
    order = ["gpt2-bpe"] * gpt2 + ["sentencepiece", "tokenizer.json", "gpt2-bpe"]
    kind = next((k for k in order if k in found), None)
    files = {"gpt2-bpe": GPT2_FILES, "sentencepiece": SENTENCEPIECE_FILES, "tokenizer.json": HF_TOKENIZER_FILES}
    return ({"type": kind, "files": files[kind]}, found[kind]) if kind else None


def read_vocabulary(spec, files):
    """(vocabulary size, bos, eos, id_of(token text) -> id or None), read from the tokenizer files themselves."""
    if spec["type"] == "gpt2-bpe":
        try:
            encoder = json.loads(Path(files["encoder.json"]).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {files['encoder.json']}: {e}") from None
        eot = encoder.get("<|endoftext|>")
        return len(encoder), eot, eot, encoder.get
    if spec["type"] == "tokenizer.json":
        return hf_vocabulary(Path(files["tokenizer.json"]))
    import sentencepiece

    try:
        sp = sentencepiece.SentencePieceProcessor(model_file=str(files["tokenizer.model"]))
    except (OSError, RuntimeError) as e:
        raise UserError(
            f"cannot load SentencePiece model {files['tokenizer.model']}: {str(e).splitlines()[0]}"
        ) from None
    id_of = lambda piece: sp.piece_to_id(piece) if sp.id_to_piece(sp.piece_to_id(piece)) == piece else None
    return sp.get_piece_size(), sp.bos_id(), sp.eos_id(), id_of


def hf_vocabulary(file):
    """read_vocabulary of a tokenizer.json. BOS: the token its post-processor puts first, if any (LLaMA-3 does,
    Qwen2.5 and SmolLM2 do not), as transformers encodes. EOS: tokenizer_config.json's eos_token, else
    config.json's eos_token_id (the first, where it lists several)."""
    tok = read_tokenizer_json(file)
    plain, framed = tok.encode("a", add_special_tokens=False).ids, tok.encode("a", add_special_tokens=True).ids
    bos = framed[0] if len(framed) > len(plain) and framed[1:][: len(plain)] == plain else None
    configs = {}
    for name in ("tokenizer_config.json", "config.json"):
        try:
            configs[name] = json.loads((file.parent / name).read_text())
        except (OSError, ValueError):
            configs[name] = {}
    eos = configs["tokenizer_config.json"].get("eos_token")
    eos = tok.token_to_id(eos.get("content") if isinstance(eos, dict) else eos) if eos else None
    if eos is None:
        eos = configs["config.json"].get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) and eos else eos
    if not isinstance(eos, int):
        raise UserError(f"{file}: no EOS token in tokenizer_config.json or config.json")
    return tok.get_vocab_size(with_added_tokens=True), bos, eos, tok.token_to_id
