"""Attention-map contrast (Alaluf et al. 2024, sec. 4.2): after the softmax, each row of the
output's attention map is pushed away from its mean,
    A' = clip((A - mean) * beta + mean, 0, 1),   mean = 1 / N_keys,
and, as in the paper's code, the rows are not renormalised. The clip makes this non-linear,
so the map is materialised (no exact form avoids it), a chunk of queries at a time: memory is
heads x chunk x N_keys instead of heads x N_queries x N_keys. The chunk is as large as the
memory at hand allows (budget_from_free_memory): on a GPU, usually all queries at once, a few
kernels a layer."""
import torch

LEAST_BUDGET = 1 << 21  # probabilities in a chunk, whatever the free memory (8 MiB in float32)


def budget_from_free_memory(free_bytes: int, share: float = 0.25) -> int:
    """The probabilities a chunk may hold so that its maps take at most `share` of `free_bytes`:
    two float32 maps are live at once (the scores, then their softmax); at least LEAST_BUDGET."""
    return max(LEAST_BUDGET, int(free_bytes * share) // 8)


def query_chunk(heads: int, queries: int, keys: int, budget_elements: int) -> int:
    """The most queries per chunk whose attention map fits `budget_elements` (at least 1)."""
    return max(1, min(queries, budget_elements // max(1, heads * keys)))


def contrast_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, strength: float,
                       budget_elements: int = LEAST_BUDGET) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) with contrast, times V. q (B, H, Nq, d), k and v (B, H, Nk, d),
    heads first; returns (B, Nq, H * d), as ComfyUI's attention does. The probabilities are
    computed in float32."""
    batch, heads, queries, dim = q.shape
    keys = k.shape[2]
    mean = 1.0 / keys
    chunk = query_chunk(batch * heads, queries, keys, budget_elements)
    out = q.new_empty(batch, heads, queries, v.shape[-1])
    # float32 copies made once, not per chunk; the 1/sqrt(d) scale rides on the keys
    k_t, v = (k.transpose(-1, -2).float() * dim ** -0.5), v.float()
    for start in range(0, queries, chunk):
        probs = (q[:, :, start:start + chunk].float() @ k_t).softmax(dim=-1)
        # (A - mean) * beta + mean, in place: one chunk-sized map at a time
        probs.mul_(strength).add_(mean * (1.0 - strength)).clamp_(0.0, 1.0)
        out[:, :, start:start + chunk] = probs @ v
    return out.transpose(1, 2).reshape(batch, queries, -1)
