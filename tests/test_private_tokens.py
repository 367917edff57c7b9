"""Marked private tokens train only the sinks: exact gradients, the loss value, checkpointing, the Trainer."""

from __future__ import annotations

import contextlib

import pytest
import torch

import memsinks
from memsinks._small_decoder import DecoderShape, build_decoder
from memsinks.private_tokens import sinks_only_pass
from memsinks.sink_slices import sink_slices
from tests.conftest import sink_pieces, take_grads, token_batch


def _model(family: str, placement: str, seed: int = 0, **config):
    shape = DecoderShape(family=family, n_layer=2, n_embd=32, n_head=2, intermediate=64, n_kv_heads=1, dropout=0.0)
    model = build_decoder(shape, 128, seed=seed, token_id=0)
    cfg = memsinks.SinksConfig(placement=placement, n_sink_units=16 if placement == "append" else None,
                               sink_warmup_steps=0, **{"memorized_threshold": 0, **config})
    return memsinks.add_sinks(model, cfg).train()


def _batch(seed: int = 0):
    x = token_batch(shape=(3, 16), seed=seed)
    private = torch.zeros_like(x)
    private[0, 5:9] = 1
    private[2, 10:14] = 1
    return x, torch.tensor([11, 12, 13]), private


# split with a learning-rate scale: the pool's up rows sit inside SplitSinkUpProjection wrappers; sinks in the upper
# block alone: the public pass runs first and the private pass replays block 0's output (memsinks.shared_prefix)
PLACEMENTS = pytest.mark.parametrize(
    "placement,config", [("append", {}), ("split", {}), ("split", {"sink_lr_scale": 4}), ("append", {"layers": [1]})],
    ids=["append", "split", "split_scaled", "append_upper_block"])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@PLACEMENTS
def test_shared_parameters_learn_public_tokens_as_shipped_and_sinks_only_private_ones(family, placement, config):
    model = _model(family, placement, **config)
    with torch.no_grad():  # trained sinks (mirror pairs cancel at step 0, which would hide a wrong routing)
        for s in sink_slices(model):
            s.param.add_(s.keep(torch.randn_like(s.param)) * 0.05)
    x, ids, private = _batch()
    # reference: the public tokens' loss with the sinks dropped (the shipped model) and the private tokens' loss
    # in each sequence's own sinks, each weighted by its share of the labelled tokens
    public = x.masked_fill(private.bool(), -100)
    secret = x.masked_fill(~private.bool(), -100)
    n_pub, n_sec = int((public[:, 1:] != -100).sum()), int((secret[:, 1:] != -100).sum())
    n_all = n_pub + n_sec
    with memsinks.sinks_mode(model, "drop"):
        loss_public = model(x, labels=public, sequence_ids=ids).loss * n_pub / n_all
    loss_public.backward()
    g_public = take_grads(model)
    loss_secret = model(x, labels=secret, sequence_ids=ids).loss * n_sec / n_all
    loss_secret.backward()
    g_secret = take_grads(model)

    out = model(x, labels=x, sequence_ids=ids, private_mask=private)
    assert torch.allclose(out.loss, loss_public + loss_secret, atol=1e-6)
    out.loss.backward()
    got = take_grads(model)
    sinks = sink_pieces(model)
    for name, g in got.items():
        piece = sinks[name]
        if piece is None:
            assert torch.allclose(g, g_public[name], atol=1e-6), name
        else:  # the sinks: the private tokens' gradient; a split tensor's shared part: the public one
            want = piece.keep(g_secret[name]) + (g_public[name] - piece.keep(g_public[name]))
            assert torch.allclose(g, want, atol=1e-6), name
            assert piece.keep(g).abs().sum() > 0, name


@PLACEMENTS
def test_a_batch_whose_every_labelled_token_is_private_gives_shared_parameters_exactly_zero_gradient(placement, config):
    model = _model("llama", placement, **config)
    x, ids, private = _batch()
    labels = x.masked_fill(~private.bool(), -100)
    model(x, labels=labels, sequence_ids=ids, private_mask=private).loss.backward()
    sinks = sink_pieces(model)
    for name, p in model.named_parameters():
        piece = sinks[name]
        if piece is None:
            assert p.grad is None or not p.grad.any(), name
        else:
            outside = p.grad - piece.keep(p.grad)
            assert not outside.any(), name
    assert all(s.keep(s.param.grad).abs().sum() > 0 for s in sink_slices(model) if s.param.dim() == 2)


@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize("layers", [None, [1]], ids=["every-block", "upper-block"])
def test_gradient_checkpointing_gives_the_same_gradients(reentrant, layers):
    x, ids, private = _batch()
    plain = _model("llama", "append", layers=layers)
    plain(x, labels=x, sequence_ids=ids, private_mask=private).loss.backward()
    want = take_grads(plain)
    ckpt = _model("llama", "append", layers=layers)
    ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    ckpt(x, labels=x, sequence_ids=ids, private_mask=private, use_cache=False).loss.backward()
    for name, g in take_grads(ckpt).items():
        assert torch.allclose(g, want[name], atol=1e-6), name


def test_with_num_items_in_batch_both_parts_are_divided_by_it():
    model = _model("llama", "append")
    x, ids, private = _batch()
    n = int((x[:, 1:] != -100).sum())
    secret = x.masked_fill(~private.bool(), -100)
    with memsinks.sinks_mode(model, "drop"):
        ref = model(x, labels=x.masked_fill(private.bool(), -100), sequence_ids=ids, num_items_in_batch=n).loss
    ref = ref + model(x, labels=secret, sequence_ids=ids, num_items_in_batch=n).loss
    out = model(x, labels=x, sequence_ids=ids, private_mask=private, num_items_in_batch=n).loss
    assert torch.allclose(out, ref, atol=1e-6)


def test_the_shipped_model_is_the_base_model_fine_tuned_with_the_private_tokens_labels_masked():
    """With append sinks, the public pass is the base model itself (sinks dropped), so after any number of steps
    the model without its sinks is what plain fine-tuning with label -100 on the private tokens gives."""
    import copy

    shape = DecoderShape(family="llama", n_layer=2, n_embd=32, n_head=2, intermediate=64, n_kv_heads=1, dropout=0.0)
    base = build_decoder(shape, 128, seed=0, token_id=0)
    plain = copy.deepcopy(base).train()
    with_sinks = memsinks.add_sinks(copy.deepcopy(base), memsinks.SinksConfig(
        placement="append", n_sink_units=16, memorized_threshold=0)).train()  # the warm-up: skipped for marked batches
    unmasked = copy.deepcopy(base).train()
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0) for m in (plain, with_sinks, unmasked)]
    for step in range(4):
        x, ids, private = _batch(seed=step)
        n = int((x[:, 1:] != -100).sum())  # the Trainer's num_items_in_batch: every labelled token of the batch
        losses = [plain(x, labels=x.masked_fill(private.bool(), -100), num_items_in_batch=n).loss,
                  with_sinks(x, labels=x, sequence_ids=ids, private_mask=private, num_items_in_batch=n).loss,
                  unmasked(x, labels=x, num_items_in_batch=n).loss]
        for loss, opt in zip(losses, optimizers):
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    x = token_batch(shape=(2, 16), seed=99)
    with torch.no_grad(), memsinks.sinks_mode(with_sinks, "drop"):
        shipped = with_sinks.eval()(x).logits
        want = plain.eval()(x).logits
        other = unmasked.eval()(x).logits
    assert torch.allclose(shipped, want, atol=1e-5)
    assert not torch.allclose(shipped, other, atol=1e-3)  # the private tokens' loss did not reach it


def test_outside_training_the_mask_is_ignored():
    model = _model("llama", "append").eval()
    x, ids, private = _batch()
    with memsinks.sinks_mode(model, "own"), torch.no_grad():
        a = model(x, labels=x, sequence_ids=ids)
        b = model(x, labels=x, sequence_ids=ids, private_mask=private)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)


@pytest.mark.parametrize("bad,error,match", [
    (lambda m: m.float(), TypeError, "0/1 integers or bools"),
    (lambda m: m * 2, ValueError, "only 0 and 1.*holds 2"),
    (lambda m: m[:, :-1], ValueError, r"shape \(3, 15\) but the input batch is \(3, 16\)"),
])
def test_a_malformed_mask_is_refused_with_what_is_wrong(bad, error, match):
    model = _model("llama", "append")
    x, ids, private = _batch()
    with pytest.raises(error, match=match):
        model(x, labels=x, sequence_ids=ids, private_mask=bad(private))


def test_a_mask_without_labels_says_the_model_must_compute_the_loss():
    model = _model("llama", "append")
    x, ids, private = _batch()
    with pytest.raises(ValueError, match="forward got no labels"):
        model(x, sequence_ids=ids, private_mask=private)


def test_return_dict_false_gets_the_same_loss_and_gradients_as_a_tuple():
    model = _model("llama", "append")
    x, ids, private = _batch()
    out = model(x, labels=x, sequence_ids=ids, private_mask=private)
    out.loss.backward()
    expected = take_grads(model)
    as_tuple = model(x, labels=x, sequence_ids=ids, private_mask=private, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.loss)
    as_tuple[0].backward()
    for name, grad in take_grads(model).items():
        assert torch.equal(grad, expected[name]), name


def test_the_column_survives_the_stock_trainer_and_its_private_tokens_reach_only_the_sinks(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = _model("llama", "append")
    rows = [token_batch(shape=(1, 12), seed=s)[0].tolist() for s in range(8)]
    ds = Dataset.from_dict({"input_ids": rows, "private_mask": [[1] * 12] * 8, "junk": ["x"] * 8})
    ds = memsinks.assign_sequence_ids(ds)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=memsinks.SinksDataCollator())
    batch = next(iter(trainer.get_train_dataloader()))
    assert "private_mask" in batch and "junk" not in batch
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    sinks = sink_pieces(model)
    for name, p in model.named_parameters():
        if sinks[name] is None:
            assert torch.equal(p, before[name]), name  # every labelled token private: shared units never moved
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if sinks[n] is not None)


def _dense_marginal_loss(logits, private_labels):
    """The pooled-target cross-entropy written out over the whole vocabulary."""
    targets = private_labels[:, 1:]
    where = targets != -100
    q = torch.zeros(logits.shape[-1])
    for t in targets[where].tolist():
        q[t] += 1.0
    q /= q.sum()
    return -(torch.log_softmax(logits[:, :-1][where], -1) * q).sum()


def test_the_batch_marginal_target_is_the_pooled_histogram_and_ignores_which_record_holds_which_token():
    from memsinks.private_tokens import batch_marginal_loss

    logits = torch.randn(3, 16, 128, generator=torch.Generator().manual_seed(0))
    x, _, private = _batch()
    labels = x.masked_fill(~private.bool(), -100)
    got = batch_marginal_loss(logits, labels)
    assert torch.allclose(got, _dense_marginal_loss(logits, labels), atol=1e-5)
    # the same private tokens moved between positions and records: the same target at every position
    where = labels != -100
    shuffled = labels.clone()
    shuffled[where] = labels[where][torch.randperm(int(where.sum()), generator=torch.Generator().manual_seed(1))]
    assert torch.allclose(batch_marginal_loss(logits, shuffled), got, atol=1e-5)
    assert float(batch_marginal_loss(logits, x.masked_fill(torch.ones_like(private).bool(), -100))) == 0.0


def test_batch_marginal_adds_the_pooled_target_to_the_shipped_models_gradient_only():
    x, ids, private = _batch()
    plain = _model("llama", "append")
    marginal = _model("llama", "append", private_token_target="batch_marginal")
    a = plain(x, labels=x, sequence_ids=ids, private_mask=private)
    b = marginal(x, labels=x, sequence_ids=ids, private_mask=private)
    assert torch.allclose(a.loss, b.loss, atol=1e-6)  # the reported loss is the tokens' loss as before
    a.loss.backward()
    b.loss.backward()
    # the extra gradient: the pooled target's cross-entropy on the shipped model (sinks dropped), per labelled token
    n_all = int((x[:, 1:] != -100).sum())
    reference = _model("llama", "append")
    with memsinks.sinks_mode(reference, "drop"):
        logits = reference(x, sequence_ids=ids).logits
    (_dense_marginal_loss(logits, x.masked_fill(~private.bool(), -100)) / n_all).backward()
    sinks = sink_pieces(marginal)
    extra = take_grads(reference)
    moved = 0
    for (name, p), q in zip(marginal.named_parameters(), plain.parameters()):
        want = q.grad if q.grad is not None else torch.zeros_like(q)
        if sinks[name] is None:
            want = want + extra[name]
            moved += int(extra[name].abs().sum() > 0)
        assert torch.allclose(p.grad if p.grad is not None else torch.zeros_like(p), want, atol=1e-6), name
    assert moved > 0


def test_an_unknown_private_token_target_is_refused():
    with pytest.raises(ValueError, match="private_token_target must be one of"):
        memsinks.SinksConfig(placement="append", n_sink_units=16, private_token_target="uniform")


def test_a_batch_with_a_mask_but_no_private_token_still_trains_the_shared_parameters_without_the_sinks():
    model = _model("llama", "append")
    with torch.no_grad():  # trained sinks, so that a pass with them on would give other gradients
        for s in sink_slices(model):
            s.param.add_(s.keep(torch.randn_like(s.param)) * 0.05)
    x, ids, _ = _batch()
    with memsinks.sinks_mode(model, "drop"):
        model(x, labels=x, sequence_ids=ids).loss.backward()
    want = take_grads(model)
    model(x, labels=x, sequence_ids=ids, private_mask=torch.zeros_like(x)).loss.backward()
    sinks = sink_pieces(model)
    for name, g in take_grads(model).items():
        assert torch.allclose(g, want[name], atol=1e-6), name
        if sinks[name] is not None:
            assert not g.any(), name  # the sinks learn only from private tokens


def test_private_tokens_with_every_sink_frozen_are_refused_rather_than_trained_into_the_shared_parameters():
    model = _model("llama", "append")
    for s in sink_slices(model):
        s.param.requires_grad_(False)
    x, ids, private = _batch()
    with pytest.raises(ValueError, match="none of the model's sink parameters is trainable"):
        model(x, labels=x, sequence_ids=ids, private_mask=private)


@pytest.mark.parametrize("placement", ["append", "split"])
def test_the_sinks_pass_leaves_only_tensors_holding_sinks_trainable_and_restores_the_rest_even_when_it_fails(placement):
    # joint_linear (the appended pool's up projections) is a custom autograd function: asked for the sinks'
    # gradient alone it would still compute its base weights', unless those stop requiring grad for the pass
    model = _model("llama", placement)
    model.model.embed_tokens.weight.requires_grad_(False)  # frozen before: it must stay frozen after
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    slices = sink_slices(model)
    holding = {id(s.param) for s in slices}
    for fail in (False, True):
        with pytest.raises(RuntimeError, match="inside") if fail else contextlib.nullcontext():
            with sinks_only_pass(model, slices):
                during = {n for n, p in model.named_parameters() if p.requires_grad}
                assert during == {n for n, p in model.named_parameters() if id(p) in holding}
                assert any("attn" in n for n in before if before[n]) and not any("attn" in n for n in during)
                if fail:
                    raise RuntimeError("inside the pass")
        assert {n: p.requires_grad for n, p in model.named_parameters()} == before
