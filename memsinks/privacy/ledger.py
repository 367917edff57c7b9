"""The privacy ledger: every noisy step ever taken on the data, on disk before the step lands.

The ledger is an Opacus accountant's history, ``[(noise_multiplier, sample_rate, steps), ...]``,
plus what ε means (δ, privacy unit, accountant). It is rewritten atomically (temporary file,
fsync, rename) by the optimizer's step hook, after the noise is drawn and before the
parameters change, so a crash at any point leaves a record that counts at least every
update the model received.

The ledger owns the rules that keep ε honest across runs (``start``, ``resume``) and the
budget (``steps_within``). Like Opacus's accountants, ``load_state_dict`` validates what it
is given before taking it: a ledger that does not describe this run is refused, never
silently continued.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

from memsinks.privacy.accounting import EPS_TOLERANCE, calibrate_noise, epsilon_of, steps_within_budget, with_steps

logger = logging.getLogger("memsinks")

LEDGER_NAME = "privacy_ledger.json"
ACCOUNTANTS = ("prv", "rdp")
#: what a resumed run must share with the ledger it continues, or ε would mean something else (σ and q are
#: checked against every step of the history)
IDENTITY = ("privacy_unit", "num_units")
_OWN_KEYS = ("memsinks_version", "accountant", "delta", "steps", "history", "epsilon", "epsilon_is_infinite")


class PrivacyLedger:
    """The accountant history of one training run, persisted at ``path`` on every step.

    Attributes:
        accountant: "prv" or "rdp".
        delta: the δ at which ε is reported.
        history: [(noise_multiplier, sample_rate, steps), ...] in the order taken.
        info: what the numbers refer to (privacy unit, number of units, C, batch size...).
        path: where ``record_step`` writes the ledger (None: nowhere).
    """

    def __init__(self, accountant: str, delta: float, info: dict[str, Any] | None = None,
                 history: list | None = None, path: str | None = None):
        self.accountant = accountant
        self.delta = float(delta)
        self.info = dict(info or {})
        self.history: list[tuple[float, float, int]] = [tuple(h) for h in (history or [])]
        self.path = path
        self._epsilon_cache: tuple[int, float] | None = None

    @property
    def steps(self) -> int:
        return sum(h[2] for h in self.history)

    def record_step(self, noise_multiplier: float, sample_rate: float) -> None:
        """Add one step and write the ledger to disk (before the update it pays for is applied)."""
        self.history = with_steps(self.history, float(noise_multiplier), float(sample_rate), 1)
        if self.path is not None:
            self.save(self.path)

    def epsilon(self) -> float:
        steps = self.steps
        if self._epsilon_cache is None or self._epsilon_cache[0] != steps:
            self._epsilon_cache = (steps, epsilon_of(self.accountant, self.history, self.delta))
        return self._epsilon_cache[1]

    # ------------------------------------------------------------ state
    def state_dict(self, with_epsilon: bool = False) -> dict[str, Any]:
        """What ``privacy_ledger.json`` holds: accountant, δ, history and info (and ε if asked)."""
        from memsinks._version import __version__

        out = {"memsinks_version": __version__, "accountant": self.accountant, "delta": self.delta,
               "steps": self.steps, "history": [list(h) for h in self.history], **self.info}
        if with_epsilon:
            eps = self.epsilon()
            out["epsilon"] = eps if math.isfinite(eps) else None
            out["epsilon_is_infinite"] = not math.isfinite(eps)
        return out

    def load_state_dict(self, state: Mapping[str, Any], source: str = "the ledger") -> None:
        """Take the history of ``state`` after checking that it is a ledger of this run.

        This ledger's own settings are the run's: ``accountant``, ``delta`` and, in ``info``,
        the privacy unit, the number of units, the sampling rate and either the noise
        multiplier or the target ε with the planned steps it was calibrated for. Raises
        ValueError, naming ``source`` and what differs, if ``state`` is malformed or records
        steps this run's configuration could not have taken; nothing is taken then.
        """
        sigma = self.check(state, source)
        recorded = {k: v for k, v in state.items() if k not in _OWN_KEYS}
        self.history = [tuple(h) for h in state["history"]]
        self.info = {**recorded, **self.info, "noise_multiplier": sigma,
                     "planned_steps": state.get("planned_steps", self.info.get("planned_steps"))}
        self._epsilon_cache = None

    def check(self, state: Mapping[str, Any], source: str = "the ledger") -> float:
        """``load_state_dict``'s checks without taking anything; returns the noise multiplier ``state`` continues."""
        _check_structure(state, source)
        differences = [f"{key}: ledger {state.get(key)!r}, now {self.info.get(key)!r}"
                       for key in IDENTITY if key in self.info and state.get(key) != self.info[key]]
        if state["accountant"] != self.accountant:
            differences.append(f"accountant: ledger {state['accountant']!r}, now {self.accountant!r}")
        if not math.isclose(state["delta"], self.delta, rel_tol=1e-12):
            differences.append(f"delta: ledger {state['delta']!r}, now {self.delta!r}")
        if differences:
            raise ValueError(f"The resumed run's privacy settings differ from {source}, the ledger it continues ("
                             + "; ".join(differences) + "). Resume with the same data and PrivacyConfig.")
        sigma, rate = self._noise_multiplier_for(state), self.info["sample_rate"]
        for recorded_sigma, recorded_rate, _ in state["history"]:
            if not math.isclose(recorded_sigma, sigma, rel_tol=1e-9):
                raise ValueError(
                    f"{source} records steps with noise multiplier {recorded_sigma:g} where this run's configuration "
                    f"gives {sigma:g} (this run's {_sigma_origin(self.info)}). A ledger that does not match the run "
                    "cannot be continued: its ε would be wrong. Resume with the PrivacyConfig and TrainingArguments "
                    "of the run that wrote it, from an untouched ledger.")
            if not math.isclose(recorded_rate, rate, rel_tol=1e-9):
                raise ValueError(
                    f"{source} records steps at sampling rate {recorded_rate:g} where this run's is {rate:g} "
                    f"(= expected batch {self.info.get('expected_batch_size')} / {self.info.get('num_units')} units). "
                    "Resume with the same global batch (per_device_train_batch_size x gradient_accumulation_steps x "
                    "processes) and data, from an untouched ledger.")
        if isinstance(state.get("noise_multiplier"), (int, float)) and not math.isclose(state["noise_multiplier"],
                                                                                         sigma, rel_tol=1e-9):
            raise ValueError(f"{source} says its noise multiplier is {state['noise_multiplier']:g} where this run's "
                             f"configuration gives {sigma:g} (this run's {_sigma_origin(self.info)}); resume from an "
                             "untouched ledger with the run's own settings.")
        return sigma

    def _noise_multiplier_for(self, state: Mapping[str, Any]) -> float:
        """The σ this run's configuration gives for the run that wrote ``state``.

        A fixed noise multiplier is the run's; a target ε gives the σ calibrated for the steps
        the ledger's run planned (recorded in it), so a resumed run may plan a different
        number of steps and still continue the noise its ledger was spent at. A recorded σ
        that differs from this version's calibration but meets the same target within
        ``EPS_TOLERANCE`` (a ledger of an earlier memsinks, whose search landed elsewhere in
        the band) is the one continued.
        """
        target = self.info.get("target_epsilon")
        if target is None:
            return float(self.info["noise_multiplier"])
        planned = state.get("planned_steps", self.info.get("planned_steps"))
        if planned == self.info.get("planned_steps"):
            sigma = float(self.info["noise_multiplier"])
        else:
            sigma = calibrate_noise(target, self.delta, self.info["sample_rate"], int(planned), self.accountant)
        recorded = state.get("noise_multiplier")
        if (isinstance(recorded, (int, float)) and not isinstance(recorded, bool) and recorded > 0
                and not math.isclose(recorded, sigma, rel_tol=1e-9)):
            # another search (an earlier memsinks used Opacus's bisection) may have calibrated the same target to a
            # slightly different σ: continue it if it meets the target to the calibration's tolerance
            eps = epsilon_of(self.accountant, [(float(recorded), self.info["sample_rate"], int(planned))], self.delta)
            if target - EPS_TOLERANCE <= eps <= target:
                return float(recorded)
        return sigma

    def save(self, path: str, with_epsilon: bool = False) -> str:
        """Write the ledger to ``path`` atomically and durably (temp file, fsync, rename)."""
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.state_dict(with_epsilon), f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    # ------------------------------------------------------------ runs
    def start(self, output_dir: str) -> None:
        """Begin a new run's ledger in ``output_dir``; refused if a ledger there already records steps."""
        path = os.path.join(output_dir, LEDGER_NAME)
        existing = read_ledger(path) if os.path.isfile(path) else None
        if existing is not None and existing["steps"] > 0:
            eps = epsilon_of(existing["accountant"], existing["history"], existing["delta"])
            raise ValueError(
                f"{path} records {existing['steps']} private steps of an earlier run (ε={eps:.3g}) on this "
                "output_dir. Starting afresh would reset ε. Resume that run with "
                "trainer.train(resume_from_checkpoint=True), or, to start a new run with its own accounting, use "
                "another output_dir (or delete that file knowing the earlier spending still counts)."
            )
        self.history = []
        self.path = path

    def resume(self, output_dir: str, checkpoint: str) -> None:
        """Continue the ledger of the run ``checkpoint`` belongs to (never a reset), to be written to ``output_dir``.

        Candidates are the checkpoint's ledger, the ledger of the folder the checkpoint lies in
        (its run may have gone on after the checkpoint) and ``output_dir``'s. Every one is
        validated (``load_state_dict``) and must continue the checkpoint's; the longest is taken,
        so steps taken after the checkpoint, by the interrupted run or by another run resumed
        from it elsewhere, stay counted: a branch carries the whole spending along. A ledger
        with fewer steps than the checkpoint's ``global_step`` is refused. Nothing is written
        here: the caller saves the ledger once everything (the budget too) checks out.
        """
        path = os.path.join(output_dir, LEDGER_NAME)
        saved_path = os.path.join(checkpoint, LEDGER_NAME)
        if not os.path.isfile(saved_path):
            raise ValueError(
                f"Checkpoint {checkpoint} has no {LEDGER_NAME}: it was not saved by a private run, so its "
                "privacy spending is unknown. Resume private training only from checkpoints of a private run."
            )
        saved = read_ledger(saved_path)
        trained = _global_step(checkpoint)
        if saved["steps"] < trained:
            raise ValueError(
                f"{saved_path} records {saved['steps']} private steps but the checkpoint is at step {trained}: the "
                "ledger was emptied or edited, so the privacy already spent on this model is unknown. Resume only "
                "from an untouched checkpoint of a private run.")
        self.check(saved, saved_path)
        chosen, source = saved, saved_path
        parent = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), LEDGER_NAME)
        for candidate in dict.fromkeys([parent, os.path.abspath(path)]):
            if candidate == os.path.abspath(saved_path) or not os.path.isfile(candidate):
                continue
            state = read_ledger(candidate)
            if not _extends(state["history"], saved["history"]):
                if candidate == os.path.abspath(path):
                    raise ValueError(f"{path} and {saved_path} record different runs; resume into the run's own "
                                     "output_dir or into a new one.")
                continue
            self.check(state, candidate)
            if state["steps"] > chosen["steps"]:
                chosen, source = state, candidate
        if chosen["steps"] > saved["steps"]:
            logger.warning(
                "%d more private steps after that checkpoint (%s) were taken on this data, as %s records; they stay "
                "counted in ε (%d steps in all).", chosen["steps"] - saved["steps"], checkpoint, source,
                chosen["steps"])
        self.load_state_dict(chosen, source)
        self.path = path

    def continue_in(self, output_dir: str) -> None:
        """Keep this ledger for another ``train()`` of the same trainer, written to ``output_dir``."""
        path = os.path.join(output_dir, LEDGER_NAME)
        if os.path.isfile(path) and os.path.abspath(path) != os.path.abspath(self.path or ""):
            existing = read_ledger(path)
            if existing["steps"] > 0 and not _extends(self.history, existing["history"]):
                raise ValueError(f"{path} records another run's {existing['steps']} private steps; train this "
                                 "trainer into its own output_dir.")
        self.path = path

    def steps_within(self, target_epsilon: float, noise_multiplier: float, sample_rate: float, guess: int) -> int:
        """How many steps in all (taken and still to take at ``noise_multiplier``, ``sample_rate``) keep
        ε <= ``target_epsilon``; raises ValueError when not even one more step fits."""
        more = steps_within_budget(self.accountant, self.history, noise_multiplier, sample_rate, self.delta,
                                   target_epsilon, guess=guess)
        if more == 0:
            raise ValueError(
                f"The privacy budget is spent: {self.steps} steps so far give ε={self.epsilon():.4g} and one more "
                f"step would exceed target_epsilon={target_epsilon}. There is nothing left to train on.")
        return self.steps + more


def read_ledger(path: str) -> dict[str, Any]:
    """The JSON of a ledger file, checked for the fields every ledger has."""
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not a readable privacy ledger ({err}); its privacy spending is unknown.") from None
    _check_structure(state, path)
    return state


def _check_structure(state: Any, source: str) -> None:
    """Refuse anything that is not a well-formed ledger: a mapping with accountant, δ and a history of steps."""
    problem = None
    if not isinstance(state, Mapping) or not state:
        problem = "it is empty or not a JSON object"
    elif any(key not in state for key in ("accountant", "delta", "history")):
        problem = "it lacks " + ", ".join(k for k in ("accountant", "delta", "history") if k not in state)
    elif state["accountant"] not in ACCOUNTANTS:
        problem = f"its accountant {state['accountant']!r} is not one of {ACCOUNTANTS}"
    elif not _is_number(state["delta"]) or not 0 < state["delta"] < 1:
        problem = f"its delta {state['delta']!r} is not in (0, 1)"
    elif not isinstance(state["history"], list) or not all(_is_step(h) for h in state["history"]):
        problem = "its history is not a list of [noise_multiplier >= 0, 0 < sample_rate <= 1, steps >= 0]"
    elif "steps" in state and state["steps"] != sum(h[2] for h in state["history"]):
        problem = f"it says {state['steps']} steps but its history holds {sum(h[2] for h in state['history'])}"
    if problem:
        raise ValueError(f"{source} is not a valid privacy ledger: {problem}. Its privacy spending is unknown; resume "
                         "only from an untouched ledger written by memsinks.")


def _sigma_origin(info: Mapping[str, Any]) -> str:
    if info.get("target_epsilon") is None:
        return f"noise_multiplier={info.get('noise_multiplier')}"
    return f"target_epsilon={info['target_epsilon']} calibrated over {info.get('planned_steps')} planned steps"


def _global_step(checkpoint: str) -> int:
    """The optimizer steps the checkpoint's model had taken (``trainer_state.json``), 0 if it does not say."""
    path = os.path.join(checkpoint, "trainer_state.json")
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8") as f:
        return int(json.load(f).get("global_step", 0))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_step(h: Any) -> bool:
    return (isinstance(h, (list, tuple)) and len(h) == 3 and _is_number(h[0]) and h[0] >= 0 and _is_number(h[1])
            and 0 < h[1] <= 1 and isinstance(h[2], int) and not isinstance(h[2], bool) and h[2] >= 0)


def _extends(longer: list, shorter: list) -> bool:
    """Whether history ``longer`` begins with history ``shorter``."""
    if len(shorter) > len(longer):
        return False
    for i, seg in enumerate(shorter):
        other = longer[i]
        if tuple(seg[:2]) != tuple(other[:2]):
            return False
        if i < len(shorter) - 1 and seg[2] != other[2]:
            return False
        if i == len(shorter) - 1 and other[2] < seg[2]:
            return False
    return True
