"""What the prompt path keeps on the device: Gemma without the parts a text prompt never runs, and the embeddings
processor's linears in fp8 when the transformer is fp8.

ltx-core's GemmaTextEncoder.encode() runs only Gemma's language model (`model.model`, no logits) on text. The
vision tower (0.4 B parameters for Gemma-3-12B), its projector and the lm_head (ltx-core loads it as an untied
copy of the embedding table: 1 B parameters) are never called, so they are replaced by stubs that hold nothing.
The embeddings processor (feature extractor + two 8-layer connectors, 3.2 B parameters in LTX-2.3) runs once per
prompt; with an fp8 quantization its Linear weights are stored in fp8 and upcast per forward by ltx-core's own
UPCAST_DURING_INFERENCE mutator, halving its 5.9 GiB.
"""

from __future__ import annotations

import torch

UNUSED_GEMMA_PARTS = ("model.vision_tower", "model.multi_modal_projector", "lm_head")


class DroppedModule(torch.nn.Module):
    """Stands in for a submodule the text path never runs; it holds no weights and refuses to be called."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.dropped = name

    def forward(self, *_args, **_kwargs):
        raise RuntimeError(f"{self.dropped} was dropped from the text encoder: the LTX-2 text path never runs it")


def is_dropped_gemma_key(key: str) -> bool:
    """A text-encoder state-dict key (the model's own names, under `model.`) that drop_unused_gemma_parts_ drops."""
    return any(key.startswith(f"model.{part}.") for part in UNUSED_GEMMA_PARTS)


def drop_unused_gemma_parts_(text_encoder: torch.nn.Module) -> list[str]:
    """Replace the vision tower, projector and lm_head with DroppedModule, in place; returns what was dropped."""
    dropped = []
    for part in UNUSED_GEMMA_PARTS:
        path = f"model.{part}"
        parent_name, _, attr = path.rpartition(".")
        parent = text_encoder.get_submodule(parent_name)
        if isinstance(getattr(parent, attr, None), torch.nn.Module):
            setattr(parent, attr, DroppedModule(path))
            dropped.append(path)
    return dropped


def store_linears_in_fp8_(model: torch.nn.Module) -> int:
    """Every Linear weight to float8_e4m3fn, upcast to the input's dtype in each forward (ltx-core's fp8-cast
    forward, applied to a model its policy does not cover). Returns how many linears."""
    import ltx_core.loader  # noqa: F401  (ltx_core.quantization needs the loader imported first)
    from ltx_core.quantization import UPCAST_DURING_INFERENCE

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for linear in linears:
        linear.weight = torch.nn.Parameter(linear.weight.data.to(torch.float8_e4m3fn), requires_grad=False)
    UPCAST_DURING_INFERENCE.mutator(model)
    return len(linears)
