"""A plain-PyTorch GPT-2-shaped decoder with a static key/value cache.

The floor of `benchmarks/generation.py` on PyTorch: the same shapes as the
benchmark's `decoder_lm` (learned positions, pre-norm blocks and a final
norm, GELU feed-forward, tied head), written as one `nn.Module` the way
Hugging Face's static cache is, its one-token step compiled with
`torch.compile(fullgraph=True, dynamic=False)` and the inductor settings
keras_tfm's compiled step uses on CPU (frozen weights, C++ GEMM kernels:
`keras_tfm._backend.TORCH_FROZEN`), the greedy loop in Python.
"""

import contextlib

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x, cache, index, mask):
        batch, steps, dim = x.shape
        # (batch, heads, steps, head_dim) each
        q, k, v = (
            t.view(batch, steps, self.heads, -1).transpose(1, 2)
            for t in self.qkv(self.norm1(x)).split(dim, dim=-1)
        )
        positions = index + torch.arange(steps, device=x.device)
        cache[0].index_copy_(2, positions, k)  # in place, static shape
        cache[1].index_copy_(2, positions, v)
        y = F.scaled_dot_product_attention(q, cache[0], cache[1], mask)
        x = x + self.out(y.transpose(1, 2).reshape(batch, steps, dim))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class Reference(nn.Module):
    def __init__(self, vocabulary, length, dim, heads, hidden, layers):
        super().__init__()
        self.tokens = nn.Embedding(vocabulary, dim)
        self.positions = nn.Embedding(length, dim)
        self.blocks = nn.ModuleList(
            Block(dim, heads, hidden) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)

    def empty_cache(self, batch, length):
        block = self.blocks[0]
        head_dim = self.tokens.embedding_dim // block.heads
        shape = (2, batch, block.heads, length, head_dim)
        return [torch.zeros(shape) for _ in self.blocks]

    def forward(self, tokens, caches, index):
        """Logits `(batch, vocabulary)` of the token after `tokens`
        `(batch, 1)` at position `index` (a 0-d int64 tensor)."""
        length = caches[0].shape[3]
        x = self.tokens(tokens) + self.positions(index.view(1))
        # (1, 1, 1, length): the filled slots
        mask = (torch.arange(length) <= index).view(1, 1, 1, length)
        for block, cache in zip(self.blocks, caches, strict=True):
            x = block(x, cache, index, mask)
        return self.norm(x[:, -1]) @ self.tokens.weight.T


def build(args, compiled=True):
    """The reference model and `generate(prompts, new_tokens)` (greedy
    from one-token prompts), its step compiled once per cache length
    (eager with `compiled=False`)."""
    model = Reference(
        args.vocabulary_size,
        args.sequence_length,
        args.embedding_dim,
        args.num_heads,
        args.intermediate_dim,
        args.num_layers,
    ).eval()
    step = model
    settings = contextlib.nullcontext
    if compiled:
        from keras_tfm import _backend

        step = torch.compile(model, fullgraph=True, dynamic=False)
        options = {**_backend.TORCH_FROZEN, "max_autotune_gemm_backends": "CPP"}

        def settings():
            return torch._inductor.config.patch(options)

    @torch.no_grad()
    def generate(prompts, new_tokens):
        tokens = torch.as_tensor(prompts, dtype=torch.int64)
        caches = model.empty_cache(tokens.shape[0], new_tokens + 1)
        out = [tokens]
        with settings():
            for index in range(new_tokens):
                logits = step(tokens, caches, torch.tensor(index))
                tokens = logits.argmax(-1, keepdim=True)
                out.append(tokens)
        return torch.cat(out, 1)

    return model, generate
