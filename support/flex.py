"""The training masks of model.py as FlexAttention BlockMasks, for the GPU: `allowed`'s rule evaluated inside
FlexAttention's mask_mod, so an L×L (or 2L×2L) boolean mask is never materialised."""

import torch

from model import allowed


class AnnealFlex:
    """Annealing BlockMasks for FlexAttention (of block diffusion too: `allowed`'s rule). The seed and threshold
    live in tensors that the mask_mod reads, so a new step changes their values, not the function: nothing
    recompiles."""

    def __init__(self, seq_len, device, block=0, ar=False):
        from torch.nn.attention.flex_attention import create_block_mask

        self.create, self.size, self.device = create_block_mask, 2 * seq_len if block else seq_len, device
        self.seed = torch.zeros((), dtype=torch.long, device=device)
        self.threshold = torch.zeros((), dtype=torch.long, device=device)

        def mask_mod(b, h, q, k):
            return allowed(q, k, seq_len, block or seq_len, self.seed, self.threshold, ar)

        self.mask_mod = mask_mod

    def __call__(self, step_seed, threshold):
        self.seed.fill_(step_seed)
        self.threshold.fill_(threshold)
        return self.create(self.mask_mod, None, None, self.size, self.size, device=self.device)
