"""Which modules of each model family are the MLP's up and down projections.

Sinks live in the MLP hidden units: the output of the up projection(s) and the input of the
down projection. A family is described by where its blocks' MLPs are and what their
projections are called; ``register_architecture`` adds a family without touching memsinks.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers.pytorch_utils import Conv1D


@dataclass(frozen=True)
class MLPLayout:
    """Names of one family's MLP modules.

    Attributes:
        blocks: dotted path from the causal LM to the ``nn.ModuleList`` of transformer blocks.
        mlp: attribute of a block that holds its MLP.
        up: attributes of the MLP whose outputs are the hidden units (Llama: gate and up).
        down: attribute of the MLP whose input is the hidden units.
        width_attr: config attribute with the MLP width (None in GPT-2 means 4 * hidden size).
    """

    blocks: str
    mlp: str
    up: tuple[str, ...]
    down: str
    width_attr: str


_REGISTRY: dict[str, MLPLayout] = {}


def register_architecture(
    model_type: str,
    *,
    blocks: str,
    up: str | tuple[str, ...] | list[str],
    down: str,
    mlp: str = "mlp",
    width_attr: str = "intermediate_size",
) -> None:
    """Teach memsinks a model family, named by its ``config.model_type``.

    Example, for a family whose blocks are ``model.layers`` with ``mlp.fc1`` / ``mlp.fc2``::

        memsinks.register_architecture("myfamily", blocks="model.layers", up="fc1", down="fc2")
    """
    up_names = (up,) if isinstance(up, str) else tuple(up)
    if not up_names:
        raise ValueError("register_architecture needs at least one up projection name.")
    if down in up_names:
        raise ValueError(f"register_architecture: {down!r} is named as both an up and the down projection.")
    _REGISTRY[model_type] = MLPLayout(blocks=blocks, mlp=mlp, up=up_names, down=down, width_attr=width_attr)


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def layout_for(model_type: str) -> MLPLayout:
    if model_type not in _REGISTRY:
        raise ValueError(
            f"memsinks does not know the MLP of model_type {model_type!r}. Supported: "
            f"{', '.join(supported_model_types())}. Register yours by naming its blocks and MLP projections, "
            f"for example memsinks.register_architecture({model_type!r}, blocks='model.layers', "
            "up=('gate_proj', 'up_proj'), down='down_proj')."
        )
    return _REGISTRY[model_type]


def find_blocks(model: nn.Module, layout: MLPLayout) -> nn.ModuleList:
    obj = model
    for part in layout.blocks.split("."):
        if not hasattr(obj, part):
            raise ValueError(
                f"{type(model).__name__} has no '{layout.blocks}' (missing '{part}'); its registered layout does "
                "not match. Re-register the architecture with the right blocks path."
            )
        obj = getattr(obj, part)
    if not isinstance(obj, nn.ModuleList):
        raise ValueError(f"'{layout.blocks}' of {type(model).__name__} is not an nn.ModuleList of blocks.")
    return obj


def _child(parent: nn.Module, name: str, role: str, path: str, index: int) -> nn.Module:
    """``parent``'s submodule ``name``, or a ValueError naming the registered name that is missing."""
    child = parent._modules.get(name)
    if child is None:
        raise ValueError(
            f"The architecture's registered layout names {role} {path!r}, but block {index} has no such module: "
            f"its {type(parent).__name__} holds {list(parent._modules)}. Call memsinks.register_architecture again "
            "with the right names."
        )
    return child


def mlp_modules(block: nn.Module, layout: MLPLayout, index: int) -> tuple[nn.Module, list[nn.Module], nn.Module]:
    """Block ``index``'s MLP, its up projections and its down projection, as the layout names them.

    Raises ValueError naming the missing name (the layout came from ``register_architecture``),
    TypeError when a projection is not an nn.Linear or Conv1D.
    """
    mlp = _child(block, layout.mlp, "the MLP (mlp=)", layout.mlp, index)
    ups = [_child(mlp, name, "an up projection (up=)", f"{layout.mlp}.{name}", index) for name in layout.up]
    down = _child(mlp, layout.down, "the down projection (down=)", f"{layout.mlp}.{layout.down}", index)
    for name, module in zip(layout.up + (layout.down,), ups + [down]):
        if not isinstance(module, (nn.Linear, Conv1D)):
            raise TypeError(
                f"{layout.mlp}.{name} is a {type(module).__name__}; memsinks wraps nn.Linear and Conv1D projections. "
                "Attach sinks before quantizing the model or wrapping its MLP with peft (LoRA on attention is fine)."
            )
    return mlp, ups, down


def get_width(config, layout: MLPLayout) -> int:
    width = getattr(config, layout.width_attr, None)
    if width is None:  # GPT-2 (n_inner) and GPT-Neo leave it unset for 4 * hidden size
        width = 4 * config.hidden_size
    return int(width)


def set_width(config, layout: MLPLayout, width: int) -> None:
    setattr(config, layout.width_attr, int(width))


_LLAMA_LIKE = dict(blocks="model.layers", up=("gate_proj", "up_proj"), down="down_proj")
register_architecture("gpt2", blocks="transformer.h", up="c_fc", down="c_proj", width_attr="n_inner")
register_architecture("gpt_neo", blocks="transformer.h", up="c_fc", down="c_proj")
register_architecture("gpt_neox", blocks="gpt_neox.layers", up="dense_h_to_4h", down="dense_4h_to_h")
for _family in ("llama", "mistral", "qwen2", "qwen3"):
    register_architecture(_family, **_LLAMA_LIKE)
