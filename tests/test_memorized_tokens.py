"""Tokens the sinks have memorized train only the sinks: exact gradients, step 0, a memorized sequence, refusals."""

from __future__ import annotations

import copy

import pytest
import torch

import memsinks
from memsinks._small_decoder import DecoderShape, build_decoder
from memsinks.memorized_tokens import token_losses
from memsinks.model import get_router
from memsinks.sink_slices import sink_slices
from tests.conftest import sink_pieces, take_grads, token_batch

SHAPE = DecoderShape(family="llama", n_layer=2, n_embd=32, n_head=2, intermediate=64, n_kv_heads=1, dropout=0.0)


def _base():
    """A tiny Llama whose head can be confident: a fresh head's logits are too small for any token's loss to go
    much below log(vocab), so nothing could be memorized below a threshold of a few nats."""
    model = build_decoder(SHAPE, 128, seed=0, token_id=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(50)
    return model


def _model(placement: str = "append", threshold: float = 1.0, **config):
    cfg = memsinks.SinksConfig(placement=placement, n_sink_units=16 if placement == "append" else None,
                               sink_warmup_steps=0, memorized_threshold=threshold,
                               **{"memorized_missed_only": False, "layers": None, **config})
    return memsinks.add_sinks(_base(), cfg).train()


def _fit_sinks(model, x, ids, steps: int):
    """``model`` after ``steps`` Adam steps in which only its sinks learn the batch (pass 1 trains them on every
    token; the shared parameters' gradient is thrown away)."""
    slices = sink_slices(model)
    opt = torch.optim.Adam([s.param for s in slices], lr=1e-3)  # x32, the appended sinks' default scale
    for _ in range(steps):
        model(x, labels=x, sequence_ids=ids).loss.backward()
        for s in slices:  # a split pool is a slice of a shared tensor: its other entries stay as they are
            s.param.grad = s.keep(s.param.grad)
        opt.step()
        model.zero_grad(set_to_none=True)
    model.forward.routed = type(model.forward.routed)()
    return model


def test_token_losses_are_the_models_own_loss_per_token_and_zero_where_unlabelled():
    model = _base()
    x = token_batch(128, (3, 12), seed=4)
    labels = x.clone()
    labels[0, 5:8] = -100
    labels[2, -1] = -100
    losses, labelled = token_losses(model(x).logits, labels)
    assert losses.shape == labelled.shape == (3, 11)
    assert torch.equal(labelled, labels[:, 1:] != -100)
    assert torch.all(losses[~labelled] == 0) and torch.all(losses[labelled] > 0)
    torch.testing.assert_close(losses.sum() / labelled.sum(), model(x, labels=labels).loss)


def _assert_shared_got_public_and_sinks_got_own(model, grads: dict, g_public: dict, g_own: dict) -> None:
    """Each shared parameter's gradient is the public reference's; each sink piece's is the own-sinks reference's
    (the rest of a split pool's tensor keeps the public one)."""
    pieces = sink_pieces(model)
    for name, g in grads.items():
        piece = pieces[name]
        if piece is None:
            assert torch.allclose(g, g_public[name], atol=1e-6), name
        else:
            want = piece.keep(g_own[name]) + (g_public[name] - piece.keep(g_public[name]))
            assert torch.allclose(g, want, atol=1e-6), name


# the upper block alone: pass 2 runs first and the sinks' passes replay block 0's output (memsinks.shared_prefix)
@pytest.mark.parametrize("placement,layers", [("append", None), ("split", None), ("append", [1])],
                         ids=["append", "split", "append-upper-block"])
@pytest.mark.parametrize("specific", [False, True], ids=["own", "specific"])
def test_shared_parameters_learn_the_unmemorized_tokens_as_shipped_and_the_sinks_learn_every_token(placement, specific,
                                                                                                  layers):
    x, ids = token_batch(shape=(3, 16), seed=0), torch.tensor([11, 12, 13])
    x[1:, 8:] = x[0, 8:]  # a second half all three share, which every sequence's sinks learn
    probe = _fit_sinks(_model(placement, layers=layers), x, ids, steps=5)
    with torch.no_grad():
        own, labelled = token_losses(probe(x, sequence_ids=ids).logits, x)
        with memsinks.sinks_mode(probe, "drop"):
            drop, _ = token_losses(probe(x, sequence_ids=ids).logits, x)
        # the sinks of sequences never trained on: each ID's stand-in -1 - id, through the class's own forward
        get_router(probe).begin(-1 - ids, "own", (), torch.float32, torch.device("cpu"))
        unseen, _ = token_losses(type(probe).forward(probe, x).logits, x)

    def routed_at(t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(routed, routed unless unseen sequences' sinks predict the token too) at threshold ``t``."""
        by_own = labelled & (own < t) & (drop > t)
        return by_own, by_own & (unseen > t)

    # a threshold at which some tokens are routed and, for the specific rule, some routed tokens are not
    # specific (the unseen sinks predict them too), so the gradients below tell the rules apart
    threshold = next(t for t in torch.quantile(own[labelled], torch.linspace(0.5, 0.9, 9)).tolist()
                     if 0 < int(routed_at(t)[1].sum()) < int(routed_at(t)[0].sum()))
    routed = routed_at(threshold)[1 if specific else 0]
    assert 0 < int(routed.sum()) < int(labelled.sum())

    model = _fit_sinks(_model(placement, threshold=threshold, memorized_specific=specific, layers=layers), x, ids,
                       steps=5)
    n = int(labelled.sum())
    model.eval()  # the references, by plain forwards (no dropout here, so eval computes what train does)
    with memsinks.sinks_mode(model, "drop"):  # the unrouted tokens' loss in the shipped model
        public = x.clone()
        public[:, 1:] = public[:, 1:].masked_fill(routed, -100)
        (model(x, labels=public, sequence_ids=ids).loss * int((public[:, 1:] != -100).sum()) / n).backward()
    g_public = take_grads(model)
    with memsinks.sinks_mode(model, "own"):  # and every token's loss in the sequence's own sinks
        model(x, labels=x, sequence_ids=ids).loss.backward()
    g_own = take_grads(model)

    out = model.train()(x, labels=x, sequence_ids=ids)
    assert torch.allclose(out.loss, ((drop * ~routed).sum() + (own * routed).sum()) / n, atol=1e-5)
    assert (model.forward.routed.routed, model.forward.routed.labelled) == (int(routed.sum()), n)
    out.loss.backward()
    grads = take_grads(model)
    _assert_shared_got_public_and_sinks_got_own(model, grads, g_public, g_own)
    pieces = sink_pieces(model)
    assert all(pieces[name].keep(g).abs().sum() > 0 for name, g in grads.items() if pieces[name] is not None)


@pytest.mark.parametrize("layers", [None, [1]], ids=["every-block", "upper-block"])
def test_with_missed_only_the_sinks_learn_only_the_tokens_the_shipped_model_misses_and_the_head_computes_only_them(
        layers):
    x, ids = token_batch(shape=(3, 16), seed=0), torch.tensor([11, 12, 13])
    probe = _fit_sinks(_model(layers=layers), x, ids, steps=5)
    with torch.no_grad():
        own, labelled = token_losses(probe(x, sequence_ids=ids).logits, x)
        with memsinks.sinks_mode(probe, "drop"):
            drop, _ = token_losses(probe(x, sequence_ids=ids).logits, x)

    def split_at(t: float) -> tuple[torch.Tensor, torch.Tensor]:
        missed = labelled & (drop > t)
        return missed, missed & (own < t)

    # some tokens the shipped model predicts (the sinks must not learn them), some routed
    threshold = next(t for t in torch.quantile(drop[labelled], torch.linspace(0.1, 0.9, 17)).tolist()
                     if 0 < int(split_at(t)[1].sum()) and int(split_at(t)[0].sum()) < int(labelled.sum()))
    missed, routed = split_at(threshold)

    model = _fit_sinks(_model(threshold=threshold, layers=layers), x, ids, steps=5)  # the same sinks as probe's
    get_router(model).config.memorized_missed_only = True
    n = int(labelled.sum())
    model.eval()
    with memsinks.sinks_mode(model, "drop"):
        public = x.clone()
        public[:, 1:] = public[:, 1:].masked_fill(routed, -100)
        (model(x, labels=public, sequence_ids=ids).loss * int((public[:, 1:] != -100).sum()) / n).backward()
    g_public = take_grads(model)
    with memsinks.sinks_mode(model, "own"):  # the sinks' loss: the missed tokens' alone, over every labelled token
        only_missed = x.clone()
        only_missed[:, 1:] = only_missed[:, 1:].masked_fill(~missed, -100)
        (model(x, labels=only_missed, sequence_ids=ids).loss * int(missed.sum()) / n).backward()
    g_own = take_grads(model)

    rows = []
    model.lm_head.register_forward_hook(lambda _m, _args, logits: rows.append(tuple(logits.shape[:2])))
    out = model.train()(x, labels=x, sequence_ids=ids)
    assert rows == [(3, 16), (1, int(missed.sum()))]  # the shipped pass, then the missed rows alone
    assert torch.allclose(out.loss, ((drop * ~routed).sum() + (own * routed).sum()) / n, atol=1e-5)
    assert model.forward.routed.routed == int(routed.sum())
    out.loss.backward()
    _assert_shared_got_public_and_sinks_got_own(model, take_grads(model), g_public, g_own)


def test_with_missed_only_and_nothing_missed_only_the_shipped_pass_runs_and_the_sinks_learn_nothing():
    model = _model(threshold=1e6, memorized_missed_only=True)  # no loss is above it
    x, ids = token_batch(shape=(2, 10), seed=0), torch.tensor([1, 2])
    rows = []
    model.lm_head.register_forward_hook(lambda _m, _args, logits: rows.append(tuple(logits.shape[:2])))
    out = model(x, labels=x, sequence_ids=ids)
    with memsinks.sinks_mode(model, "drop"):
        plain = model.eval()(x, labels=x, sequence_ids=ids).loss
    assert rows == [(2, 10), (2, 10)]  # the training forward's one pass, then the reference's
    assert torch.allclose(out.loss, plain, atol=1e-6) and model.forward.routed.routed == 0
    out.loss.backward()
    pieces = sink_pieces(model)
    for name, p in model.named_parameters():
        if pieces[name] is not None:
            assert not pieces[name].keep(p.grad).any(), name


def test_at_step_0_nothing_is_memorized_so_the_shipped_model_learns_as_plain_fine_tuning_does():
    base = _base().train()
    model = memsinks.add_sinks(copy.deepcopy(base), memsinks.SinksConfig(
        placement="append", n_sink_units=16, sink_warmup_steps=0, memorized_threshold=0.01)).train()
    x, ids = token_batch(shape=(3, 16), seed=0), torch.tensor([1, 2, 3])
    out = model(x, labels=x, sequence_ids=ids)
    ref = base(x, labels=x)
    assert torch.allclose(out.loss, ref.loss, atol=1e-6) and model.forward.routed.routed == 0
    out.loss.backward()
    ref.loss.backward()
    params = dict(model.named_parameters())
    for name, p in base.named_parameters():
        mine = params.get(name, params.get(name.replace(".weight", ".base.weight")))
        assert torch.allclose(mine.grad, p.grad, atol=1e-6), name
    sinks = [s for s in sink_slices(model) if s.param.dim() == 2]
    assert all(s.param.grad.abs().sum() > 0 for s in sinks)  # the sinks start learning at once


def test_once_its_sinks_memorized_a_sequence_the_shipped_model_did_not_learn_it_stops_training_the_shipped_model():
    x, ids = token_batch(shape=(1, 12), seed=3), torch.tensor([7])
    model = _fit_sinks(_model(threshold=0.3), x, ids, steps=40)
    with torch.no_grad():
        own, _ = token_losses(model(x, sequence_ids=ids).logits, x)
        with memsinks.sinks_mode(model, "drop"):
            drop, _ = token_losses(model(x, sequence_ids=ids).logits, x)
    assert bool((own < 0.3).all() and (drop > 0.3).all())  # memorized by the sinks alone
    model(x, labels=x, sequence_ids=ids).loss.backward()
    assert model.forward.routed.routed == model.forward.routed.labelled == 11
    pieces = sink_pieces(model)
    for name, p in model.named_parameters():
        if pieces[name] is None:
            assert p.grad is None or not p.grad.any(), name
    # another sequence, unknown to its sinks, still trains the shipped model
    model.zero_grad(set_to_none=True)
    model(token_batch(shape=(1, 12), seed=4), labels=token_batch(shape=(1, 12), seed=4),
          sequence_ids=torch.tensor([8])).loss.backward()
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0


@pytest.mark.parametrize("specific", [False, True], ids=["own", "specific"])
def test_blocks_below_the_lowest_sink_block_compute_once_per_training_forward(specific):
    model = _model(threshold=0.2, layers=[1], memorized_specific=specific)
    x, ids = token_batch(shape=(2, 10), seed=0), torch.tensor([1, 2])
    calls = {0: 0, 1: 0}
    for i, block in enumerate(model.model.layers):
        block.mlp.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    model(x, labels=x, sequence_ids=ids).loss.backward()
    assert calls == {0: 1, 1: 3 if specific else 2}  # the upper block: shipped, own sinks (and unseen sinks)
    assert "forward" not in model.model.layers[0].__dict__  # the block's own forward is back


def test_training_with_the_sinks_dropped_on_purpose_is_plain_training():
    model = _model(threshold=0.01)
    plain = copy.deepcopy(model)
    x, ids = token_batch(shape=(2, 10), seed=0), torch.tensor([1, 2])
    with memsinks.sinks_mode(model, "drop"):
        model(x, labels=x, sequence_ids=ids).loss.backward()
    with memsinks.sinks_mode(plain, "drop"):
        plain.eval()(x, labels=x, sequence_ids=ids).loss.backward()
    assert model.forward.routed.labelled == 0
    want = take_grads(plain)
    for name, g in take_grads(model).items():
        assert torch.equal(g, want[name]), name


@pytest.mark.parametrize("missed_only", [False, True], ids=["every-token", "missed-only"])
def test_marked_private_tokens_are_routed_whatever_their_losses(missed_only):
    model = _model(threshold=1e6, memorized_missed_only=missed_only)  # nothing reaches it: only the marks route
    x, ids = token_batch(shape=(2, 10), seed=0), torch.tensor([1, 2])
    private = torch.zeros_like(x)
    private[0, 3:6] = 1
    model(x, labels=x, sequence_ids=ids, private_mask=private)
    assert model.forward.routed.routed == 3


@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize("layers", [None, [1]], ids=["every-block", "upper-block"])
@pytest.mark.parametrize("missed_only", [False, True], ids=["every-token", "missed-only"])
def test_gradient_checkpointing_gives_the_same_gradients(reentrant, layers, missed_only):
    x, ids = token_batch(shape=(3, 16), seed=0), torch.tensor([1, 2, 3])
    config = {"threshold": 0.2, "layers": layers, "memorized_missed_only": missed_only}
    plain = _fit_sinks(_model(**config), x, ids, steps=5)
    plain(x, labels=x, sequence_ids=ids).loss.backward()
    want = take_grads(plain)
    ckpt = _fit_sinks(_model(**config), x, ids, steps=5)
    ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    ckpt(x, labels=x, sequence_ids=ids, use_cache=False).loss.backward()
    assert ckpt.forward.routed.routed == plain.forward.routed.routed > 0
    for name, g in take_grads(ckpt).items():
        assert torch.allclose(g, want[name], atol=1e-6), name


def test_with_num_items_in_batch_the_loss_is_divided_by_it_and_outside_training_nothing_changes():
    x, ids = token_batch(shape=(2, 10), seed=0), torch.tensor([1, 2])
    model = _fit_sinks(_model(threshold=0.2), x, ids, steps=5)
    mean = model(x, labels=x, sequence_ids=ids).loss
    summed = model(x, labels=x, sequence_ids=ids, num_items_in_batch=1).loss
    assert torch.allclose(summed, mean * 18, atol=1e-4)
    model.eval()
    with torch.no_grad(), memsinks.sinks_mode(model, "own"):  # evaluation scores every token, as without the option
        evaluated = model(x, labels=x, sequence_ids=ids).loss
        own, labelled = token_losses(model(x, sequence_ids=ids).logits, x)
    assert model.forward.routed.labelled == 2 * 18  # the two training forwards; evaluation counts nothing
    assert torch.allclose(evaluated, own.sum() / labelled.sum(), atol=1e-6)


def test_memorized_specific_is_a_bool_and_needs_a_threshold():
    with pytest.raises(ValueError, match="memorized_specific must be True or False"):
        memsinks.SinksConfig(placement="append", n_sink_units=8, memorized_threshold=1.0, memorized_specific=1)
    with pytest.raises(ValueError, match=r"memorized_threshold is 0 \(off\); set a threshold"):
        memsinks.SinksConfig(placement="append", n_sink_units=8, memorized_threshold=0, memorized_specific=True)
    with pytest.raises(ValueError, match=r"memorized_threshold is 0 \(off\); set a threshold"):
        memsinks.SinksConfig(memorized_specific=True)  # split: off unless set


def test_memorized_missed_only_is_a_bool_and_needs_a_threshold():
    with pytest.raises(ValueError, match="memorized_missed_only must be True or False"):
        memsinks.SinksConfig(placement="append", n_sink_units=8, memorized_threshold=1.0, memorized_missed_only="yes")
    with pytest.raises(ValueError, match=r"memorized_threshold is 0 \(off\); set a threshold"):
        memsinks.SinksConfig(placement="append", n_sink_units=8, memorized_threshold=0, memorized_missed_only=True)


@pytest.mark.parametrize("threshold", [-1.0, True, "1", float("inf"), float("nan")])
def test_a_bad_threshold_is_refused(threshold):
    with pytest.raises(ValueError, match=r"memorized_threshold must be a number of nats >= 0 \(0: off\)"):
        memsinks.SinksConfig(placement="append", n_sink_units=8, memorized_threshold=threshold)


def test_without_labels_or_with_frozen_sinks_training_is_refused_with_the_reason():
    model = _model()
    x, ids = token_batch(shape=(2, 10), seed=0), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="must compute the loss itself"):
        model(x, sequence_ids=ids)
    for s in sink_slices(model):
        s.param.requires_grad_(False)
    with pytest.raises(ValueError, match="none of the model's sink parameters is trainable"):
        model(x, labels=x, sequence_ids=ids)


def test_the_append_defaults_route_in_the_upper_third_exact_at_step_zero_with_sink_gradient_at_step_one():
    """``SinksConfig(placement="append", n_sink_units=N)`` alone: sinks in the top third of the blocks, the base's
    logits at step 0, and a first training step that gives the sinks gradient and the blocks below them too."""
    shape = DecoderShape(family="llama", n_layer=6, n_embd=32, n_head=2, intermediate=64, n_kv_heads=1, dropout=0.0)
    base = build_decoder(shape, 128, seed=0, token_id=0)
    model = memsinks.add_sinks(copy.deepcopy(base), memsinks.SinksConfig(placement="append", n_sink_units=16))
    config = memsinks.get_sinks_config(model)
    assert (config.layers, config.memorized_threshold, config.memorized_missed_only) == ([4, 5], 1.0, True)
    x, ids = token_batch(shape=(2, 12), seed=0), torch.tensor([5, 6])
    with torch.no_grad(), memsinks.sinks_mode(model, "own"):
        assert torch.equal(model.eval()(x, sequence_ids=ids).logits, base.eval()(x).logits)
    model.train()(x, labels=x, sequence_ids=ids).loss.backward()
    pieces = sink_pieces(model)
    sinks = [p.grad for name, p in model.named_parameters() if pieces[name] is not None]
    assert sinks and all(g is not None for g in sinks) and any(pieces[n].keep(p.grad).abs().sum() > 0
                                                                for n, p in model.named_parameters()
                                                                if pieces[n] is not None)
    below = model.model.layers[0].mlp.down_proj.weight
    assert not below.grad.any()  # the default 8-step warm-up: only the sinks learn at first
    for _ in range(config.sink_warmup_steps):
        model.zero_grad()
        model(x, labels=x, sequence_ids=ids).loss.backward()
    assert below.grad.abs().sum() > 0  # then the shipped pass trains the blocks below the sinks
    assert model.forward.routed.labelled > 0  # through the routed step


def test_in_the_warm_up_the_shipped_pass_skips_its_backward_and_only_the_sinks_learn():
    """During the sinks' warm-up no shared parameter learns, so the routed step's shipped pass runs without gradient:
    nothing is backpropagated through it, every shared parameter gets exactly zero gradient (not None: the optimizer
    and the clipping norm see the step as before), and the sinks get the gradient they get when every shared
    parameter is frozen."""
    shape = DecoderShape(family="llama", n_layer=6, n_embd=32, n_head=2, intermediate=64, n_kv_heads=1, dropout=0.0)
    base = build_decoder(shape, 128, seed=0, token_id=0)
    warm = memsinks.add_sinks(copy.deepcopy(base), memsinks.SinksConfig(placement="append", n_sink_units=16)).train()
    frozen = memsinks.add_sinks(copy.deepcopy(base), memsinks.SinksConfig(placement="append", n_sink_units=16,
                                                                          sink_warmup_steps=0)).train()
    pieces = sink_pieces(frozen)
    for name, p in frozen.named_parameters():
        p.requires_grad_(pieces[name] is not None)
    x, ids = token_batch(shape=(2, 12), seed=0), torch.tensor([5, 6])
    backward_calls = []
    warm.model.layers[0].register_full_backward_hook(lambda *_: backward_calls.append(1))
    loss = warm(x, labels=x, sequence_ids=ids).loss
    loss.backward()
    reference = frozen(x, labels=x, sequence_ids=ids).loss
    reference.backward()
    assert not backward_calls and torch.equal(loss.detach(), reference.detach())
    sinks = dict(frozen.named_parameters())
    for name, p in warm.named_parameters():
        if pieces[name] is None:
            assert p.grad is not None and not p.grad.any(), name
        else:
            assert torch.equal(p.grad, sinks[name].grad), name
    assert any(p.grad.any() for name, p in warm.named_parameters() if pieces[name] is not None)
    for _ in range(memsinks.get_sinks_config(warm).sink_warmup_steps):
        warm.zero_grad()
        warm(x, labels=x, sequence_ids=ids).loss.backward()
    assert backward_calls and warm.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0


def test_in_the_warm_up_a_parameter_partitioned_away_keeps_the_shipped_backward():
    """A trainable parameter with no elements at the forward's end (DeepSpeed ZeRO-3 leaves its partitioned
    parameters so) could not be given a zero gradient of its real shape: the step keeps the shipped pass's backward."""
    shape = DecoderShape(family="llama", n_layer=3, n_embd=32, n_head=2, intermediate=64, n_kv_heads=1, dropout=0.0)
    model = memsinks.add_sinks(build_decoder(shape, 128, seed=0, token_id=0),
                               memsinks.SinksConfig(placement="append", n_sink_units=16)).train()
    model.model.layers[0].register_parameter("partitioned", torch.nn.Parameter(torch.empty(0)))
    backward_calls = []
    model.model.layers[0].register_full_backward_hook(lambda *_: backward_calls.append(1))
    x, ids = token_batch(shape=(2, 12), seed=0), torch.tensor([5, 6])
    model(x, labels=x, sequence_ids=ids).loss.backward()
    assert backward_calls and not model.model.layers[0].mlp.down_proj.weight.grad.any()  # the warm-up's hooks
