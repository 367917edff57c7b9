"""Which handler gives a module's per-row gradients: registered per module type, found along the class's MRO.

As in Opacus (``register_grad_sampler``), a handler class is registered for module types
with a decorator, and a subclass of a registered type gets its parent's handler (the lookup
walks ``type(module).__mro__``), so a wrapper subclassing ``nn.Linear`` or a sink projection
needs no registration of its own. Modules recognised by what they are rather than by their
class (transformers' many ``*RMSNorm`` classes) are registered with a predicate. Any other
module with trainable parameters of its own gets the ``torch.func`` fallback.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from memsinks.privacy.grad_sample.factors import Contribution

_BY_TYPE: dict[type, type["Handler"]] = {}
_BY_PREDICATE: list[tuple[Callable[[nn.Module], bool], type["Handler"]]] = []
_FALLBACK: list[type["Handler"]] = []


class Handler:
    """How one module type's parameters get per-row gradients from its input and output gradient.

    A handler is made per module (``Handler()``); the clipper calls, in order:

    - ``accepts(module)`` (class method): False hands the module on to the next type in
      its MRO (a sink down projection has a handler only when its pool is appended);
    - ``validate(module)``: raise, with the fix, for a configuration it cannot handle;
    - ``owned(module)``: the trainable parameters it accounts for, by name relative to the
      module (a wrapper may account for a submodule's, see ``covers``);
    - ``covers(module)``: submodules whose parameters ``owned`` includes (they get no
      handler of their own);
    - ``capture(module, args)``: what to keep from the forward's positional arguments;
    - ``contributions(module, saved, g, owned)``: ``(parameter, Outer | Dense)`` pairs from
      the kept inputs and the output gradient ``g``.
    """

    #: names (relative to the module) of the parameters this handler gives outer products for
    outer_params: tuple[str, ...] = ()

    @classmethod
    def accepts(cls, module: nn.Module) -> bool:
        return True

    def validate(self, module: nn.Module) -> None:
        """Refuse a module this handler cannot give exact per-row gradients for."""

    def owned(self, module: nn.Module) -> dict[str, nn.Parameter]:
        return {n: p for n, p in module.named_parameters(recurse=False) if p.requires_grad}

    def covers(self, module: nn.Module) -> tuple[nn.Module, ...]:
        return ()

    def capture(self, module: nn.Module, args: tuple) -> tuple:
        return (args[0],)

    def contributions(self, module: nn.Module, saved: tuple, g: torch.Tensor,
                      owned: dict[str, nn.Parameter]) -> Iterator[tuple[nn.Parameter, Contribution]]:
        raise NotImplementedError


def register_handler(*module_types: type[nn.Module]):
    """Class decorator: the decorated ``Handler`` serves ``module_types`` and their subclasses."""

    def decorator(handler: type[Handler]) -> type[Handler]:
        for module_type in module_types:
            _BY_TYPE[module_type] = handler
        return handler

    return decorator


def register_handler_if(predicate: Callable[[nn.Module], bool]):
    """Class decorator: the decorated ``Handler`` serves modules for which ``predicate`` holds (after the MRO)."""

    def decorator(handler: type[Handler]) -> type[Handler]:
        _BY_PREDICATE.append((predicate, handler))
        return handler

    return decorator


def register_fallback(handler: type[Handler]) -> type[Handler]:
    """Class decorator: the handler of any module with trainable parameters and no other handler."""
    _FALLBACK[:] = [handler]
    return handler


def handler_for(module: nn.Module) -> Handler | None:
    """The handler of ``module``: by type along its MRO, then by predicate; None if none is registered."""
    for cls in type(module).__mro__:
        handler = _BY_TYPE.get(cls)
        if handler is not None and handler.accepts(module):
            return handler()
    for predicate, handler in _BY_PREDICATE:
        if predicate(module) and handler.accepts(module):
            return handler()
    return None


def fallback_handler() -> Handler:
    """The handler of a module with trainable parameters that no registered handler serves."""
    return _FALLBACK[0]()
