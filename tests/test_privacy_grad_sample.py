"""Per-unit gradient norms and clipped sums (memsinks.privacy.grad_sample) against row-by-row autograd."""

import pytest
import torch
from torch import nn

import memsinks
from memsinks.privacy.grad_sample import PerUnitClipper
from memsinks.privacy.loss import causal_lm_row_losses
from memsinks.privacy.validators import check_model, check_per_unit_gradients
from tests.conftest import tiny_model
from tests.privacy_helpers import brute_force_unit_grads, no_dropout, unit_norms

ROWS, LENGTH = 4, 10


def _batch(seed=1):
    x = torch.randint(1, 128, (ROWS, LENGTH), generator=torch.Generator().manual_seed(seed))
    x[1, 2] = x[3, 7] = 0  # the pad token: Llama's embedding gives its row no gradient
    labels = x.clone()
    labels[0, 3:6] = -100
    return x, labels


def _clip_by_hand(per_unit, norms, c):
    factors = (c / (norms + 1e-6)).clamp(max=1.0)
    return {p: torch.tensordot(factors.to(g.dtype), g, dims=1) for p, g in per_unit.items()}, factors


def _run_clipper(model, x, labels, units, mode, c, kwargs):
    count = int(units.max()) + 1
    sizes = torch.bincount(units, minlength=count).float()
    clipper = PerUnitClipper(model, max_grad_norm=c, clipping=mode)
    for p in clipper.params:
        p.summed_grad = None
    with clipper.capture(units, count):
        loss = (causal_lm_row_losses(model(x, **kwargs).logits, labels) / sizes[units]).sum()
        loss.backward()
    norms = clipper.clip_and_accumulate()
    clipper.close()
    return clipper, norms


def _check(model, units, mode, kwargs=None, c=None):
    """Norms equal autograd's; clipped sum equals the hand-clipped sum; every clipped unit has norm <= C."""
    x, labels = _batch()
    kwargs = dict(kwargs or {})
    kwargs.setdefault("position_ids", torch.arange(LENGTH).expand(ROWS, LENGTH))
    per_unit = brute_force_unit_grads(model, x, labels, units, kwargs)
    ref_norms = unit_norms(per_unit)
    c = float(ref_norms.min() * ref_norms.max()) ** 0.5 if c is None else c  # clips some units and not others
    clipper, norms = _run_clipper(model, x, labels, units, mode, c, kwargs)
    torch.testing.assert_close(norms.double(), ref_norms, rtol=1e-4, atol=1e-6)
    expected, factors = _clip_by_hand(per_unit, ref_norms, c)
    assert (factors < 1).any() and (factors == 1).any()
    for p, want in expected.items():
        torch.testing.assert_close(p.summed_grad, want.to(p.dtype), rtol=1e-4, atol=1e-6)
    clipped_norms = unit_norms({p: g * clipper.last_clip_factors.to(g.dtype).view(-1, *[1] * (g.dim() - 1))
                                for p, g in per_unit.items()})
    assert torch.all(clipped_norms <= c * (1 + 1e-5))
    return clipper


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_per_example_clipping_matches_autograd(family, mode):
    model = no_dropout(tiny_model(family)).eval()
    clipper = _check(model, torch.arange(ROWS), mode)
    modes = set(clipper.modes().values())
    assert modes == ({"hooks"} if mode == "hooks" else {"hooks", "ghost"})  # biases and norm scales stay materialised


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_user_level_units_pool_their_rows(mode):
    # rows 0 and 2 are one user, rows 1 and 3 another: a unit's gradient is the mean of its rows'
    model = no_dropout(tiny_model("gpt2")).eval()
    _check(model, torch.tensor([0, 1, 0, 1]), mode)


def test_tied_embedding_gets_one_norm_for_both_uses():
    model = no_dropout(tiny_model("gpt2")).eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    clipper = _check(model, torch.arange(ROWS), "ghost")
    assert clipper.modes()["transformer.wte.weight"] == "ghost"  # cross term of embedding and output layer


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("placement", ["split", "append"])
def test_sink_wrappers_get_exact_per_example_gradients(family, placement):
    # the wrappers project with F.linear / addmm on the base weights, bypassing the base module's forward
    model = no_dropout(tiny_model(family))
    cfg = memsinks.SinksConfig(placement=placement, n_sink_units=16 if placement == "append" else None, p_gen=0.5)
    memsinks.add_sinks(model, cfg)
    if placement == "append":  # zero-initialised pool weights would hide a missing gradient path
        for name, p in model.named_parameters():
            if "sink_weight" in name:
                nn.init.normal_(p, std=0.05)
    model.eval()
    ids = {"sequence_ids": torch.tensor([101, 202, 101, 303])}
    with memsinks.sinks_mode(model, "own"):
        clipper = _check(model, torch.arange(ROWS), "auto", ids)
        _check(model, torch.tensor([0, 1, 0, 2]), "ghost", ids)
    sink_params = [n for n in clipper.modes() if "sink_weight" in n or ".base." in n]
    assert sink_params


class _GatedTanh(nn.Module):
    """A layer memsinks has no handler for: per-example gradients come from the functorch fallback."""

    def __init__(self, width):
        super().__init__()
        self.gate = nn.Parameter(torch.linspace(0.5, 1.5, width))

    def forward(self, x):
        return torch.tanh(x) * self.gate


def test_unknown_layers_use_the_functorch_fallback():
    from memsinks.privacy.grad_sample import _FunctorchHandler

    model = no_dropout(tiny_model("llama"))
    model.model.norm = _GatedTanh(model.config.hidden_size)
    model.eval()
    clipper = _check(model, torch.tensor([0, 1, 1, 2]), "auto")
    handlers = {name: type(h) for name, _, h, _ in clipper.owners}
    assert handlers["model.norm"] is _FunctorchHandler


def test_lora_adapters():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(no_dropout(tiny_model("llama")), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.1)
    model.eval()
    clipper = _check(model, torch.arange(ROWS), "auto")
    assert all("lora_" in n for n in clipper.modes())


def test_masked_tokens_do_not_count():
    model = no_dropout(tiny_model("gpt2")).eval()
    x, _ = _batch()
    labels = x.clone()
    labels[1] = -100  # row 1 has no target at all
    labels[2, 5:] = -100
    losses = causal_lm_row_losses(model(x).logits, labels)
    logp = torch.log_softmax(model(x).logits.float(), -1)
    nll = -logp[2, :-1].gather(1, x[2, 1:, None]).squeeze(1)
    torch.testing.assert_close(losses[2], nll[:4].mean())  # targets at positions 1..4 only
    assert losses[1] == 0
    pos = {"position_ids": torch.arange(LENGTH).expand(ROWS, LENGTH)}
    _, norms = _run_clipper(model, x, labels, torch.arange(ROWS), "ghost", 1.0, pos)
    assert norms[1] == 0 and torch.all(norms[[0, 2, 3]] > 0)


def test_broadcast_position_ids_are_refused_with_the_fix():
    model = no_dropout(tiny_model("gpt2")).eval()
    x, labels = _batch()
    clipper = PerUnitClipper(model, 1.0)
    with pytest.raises(RuntimeError, match=r"wpe.*position_ids of shape \(B, T\)"):
        with clipper.capture(torch.arange(ROWS), ROWS):
            model(x)  # GPT-2's default position_ids are (1, T)
    assert all(p.requires_grad for p in clipper.params)  # restored after the error


def test_batch_norm_is_refused_by_name():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match=r"^1 is a BatchNorm1d.*GroupNorm"):
        check_model(model)


class _SharedWeightLM(nn.Module):
    """A toy LM whose output layer reads the first block's weight directly (not through its forward)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 16)

    def forward(self, input_ids, **kwargs):
        h = torch.tanh(self.block(self.emb(input_ids)))
        h = h @ self.block.weight  # a second use the hooks never see
        return type("Out", (), {"logits": self.head(h)})()


def test_reference_check_names_a_parameter_used_outside_its_forward():
    model = _SharedWeightLM()
    clipper = PerUnitClipper(model, 1.0)
    with pytest.raises(ValueError, match=r"block\.weight.*freeze it"):
        check_per_unit_gradients(model, clipper, lambda batch: {"input_ids": batch["input_ids"]}, vocab_size=16)
    model.block.weight.requires_grad_(False)  # the offered fix
    check_per_unit_gradients(model, PerUnitClipper(model, 1.0), lambda b: {"input_ids": b["input_ids"]}, 16)


def test_hooks_are_inert_outside_capture_and_generate_works():
    model = tiny_model("gpt2").eval()
    x, _ = _batch()
    before = model(x).logits
    PerUnitClipper(model, 1.0)
    torch.testing.assert_close(model(x).logits, before)
    out = model.generate(x[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)
