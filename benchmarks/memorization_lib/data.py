"""The benchmark's data: text windows with repeated and held-out sets, canaries, and personal-data records.

Scenario 1 is a memorization corpus of a text (``memsinks._memorization_corpus``): token
windows, a subset repeated in the training stream, canaries planted. Scenario 2 fine-tunes on
synthetic adverse-event reports (in the spirit of pharmacovigilance case reports), each
carrying a patient's name, birth date and phone number; the phone number is the secret that
extraction and exposure look for.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from memsinks._memorization_corpus import MemorizationCorpus, Source, build
from memsinks.corpus import make_demo_corpus, train_tokenizer
from memsinks.probes import Canary

DIGITS = "0123456789"


def load_text(path: str | None, max_chars: int, demo_seed: int = 0) -> tuple[str, str]:
    """The text to train on and a description of it: ``path`` (its first ``max_chars`` characters)
    or, without a path, the embedded demo generator's stories joined into one text."""
    if path:
        with open(path, encoding="utf-8") as f:
            text = f.read(max_chars)
        if not text.strip():
            raise ValueError(f"{path} is empty; give a text file with real text (for example tinyshakespeare.txt).")
        return text, f"{path} (first {len(text):,} characters)"
    stories = []
    total = 0
    n = 0
    # the generator makes ~300-character stories; draw batches until the text is long enough
    while total < max_chars:
        corpus = make_demo_corpus(n_train=500, n_repeated=0, n_heldout=0, n_canaries=0, seed=demo_seed + n)
        stories.extend(corpus.train)
        total += sum(len(s) + 1 for s in corpus.train)
        n += 1
    text = "\n".join(stories)[:max_chars]
    return text, f"embedded demo generator (memsinks.corpus.make_demo_corpus, {len(text):,} characters)"


def digit_tokens(tokenizer) -> list[int]:
    """Token IDs of the ten digits; raises unless each digit is one token (the secrets' alphabet)."""
    ids = []
    for d in DIGITS:
        enc = tokenizer(d, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise ValueError(f"The tokenizer splits the digit {d!r} into {len(enc)} tokens; the benchmark's secrets "
                             "need one token per digit (memsinks.corpus.train_tokenizer splits digits individually).")
        ids.append(enc[0])
    return ids


@dataclass
class SecretRecord:
    """A training row whose secret the probes look for.

    ``tokens`` = ``prefix + secret + suffix`` (token IDs, as trained on); ``secret`` holds one
    digit token per character of the secret.
    """

    text: str
    prefix: list[int]
    secret: list[int]
    suffix: list[int]

    @property
    def tokens(self) -> list[int]:
        return self.prefix + self.secret + self.suffix


def encode_secret_record(text: str, tokenizer, bos: list[int], eos: list[int]) -> SecretRecord:
    """Tokenize ``bos + text + eos`` with the last run of digits in ``text`` as the secret.

    The prefix and suffix are tokenized separately from the digits; the result is checked to
    equal the tokenization of the whole text, so that the probes score exactly what was trained.
    """
    canary = Canary.from_text(text)
    digits = digit_tokens(tokenizer)

    def enc(s: str) -> list[int]:
        return list(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else []

    prefix = bos + enc(canary.prefix)
    secret = [digits[DIGITS.index(c)] for c in canary.secret]
    suffix = enc(canary.suffix) + eos
    whole = bos + enc(text) + eos
    if prefix + secret + suffix != whole:
        raise ValueError(f"Tokenizing the record in parts differs from tokenizing it whole ({text[:40]!r}...); the "
                         "tokenizer merges digits with their neighbours. Use a tokenizer that splits digits.")
    return SecretRecord(text=text, prefix=prefix, secret=secret, suffix=suffix)


@dataclass
class Scenario1Data:
    """One seed's corpus of the text (windows, canaries and the tokenizer), its canaries as secret records,
    and a description of the text."""

    corpus: MemorizationCorpus
    canaries: list[SecretRecord]
    source: str

    def sources(self, repeats: int, canary_repeats: int) -> list[Source]:
        """Unique windows once, each repeated window ``repeats`` times, each canary ``canary_repeats`` times."""
        c = self.corpus
        return [Source(c.train), Source(c.repeated, repeats), Source(c.canaries, canary_repeats)]

    def near_duplicate_sources(self, swapper, copies: int, rate: float, seed: int) -> list[Source]:
        """Unique windows once and ``copies`` near-duplicate copies of each repeated window (``rate`` of its
        tokens swapped, keyed by the window; see ``near_duplicates``); no canaries."""
        return [Source(self.corpus.train), swapper.copies(self.corpus.repeated, copies, rate, seed)]


def scenario1_tokenizer(text: str, vocab_size: int):
    return train_tokenizer([text], vocab_size=vocab_size, model_max_length=1 << 30)


def build_scenario1(text: str, source: str, tokenizer, s, seed: int) -> Scenario1Data:
    """Windows drawn with ``seed`` (which windows repeat and which are held out) and ``s.n_canaries`` canaries,
    drawn with ``10_000 + seed``."""
    corpus = build(dataclasses.replace(s, seed=seed), text=text, tokenizer=tokenizer, canary_seed=10_000 + seed)
    return Scenario1Data(corpus=corpus, canaries=encode_canaries(corpus.canary_texts, corpus.canaries, tokenizer),
                         source=source)


def encode_canaries(texts: list[str], rows: list[list[int]], tokenizer) -> list[SecretRecord]:
    """The canaries ``texts`` as secret records framed with EOS, checked against their training ``rows``."""
    eos = [tokenizer.eos_token_id]
    canaries = [encode_secret_record(t, tokenizer, eos, eos) for t in texts]
    if [c.tokens for c in canaries] != rows:
        raise ValueError("The canaries' rows differ from their secret records: the tokenizer adds special tokens of "
                         "its own. Use a tokenizer from memsinks.corpus.train_tokenizer.")
    return canaries


# ---------------------------------------------------------------------------------------------- scenario 2
_FIRST = ["Anna", "Ben", "Clara", "David", "Elena", "Farid", "Greta", "Hassan", "Ines", "Jonas", "Katrin", "Lukas",
          "Marta", "Nils", "Olga", "Pavel", "Rosa", "Stefan", "Tamara", "Viktor", "Wiebke", "Yusuf", "Zofia", "Emil"]
_LAST = ["Keller", "Novak", "Berger", "Hansen", "Moreau", "Rossi", "Schmidt", "Kowalski", "Lindqvist", "Petrov",
         "Okafor", "Yilmaz", "Fischer", "Dubois", "Jensen", "Marino", "Weber", "Horvat", "Costa", "Brandt"]
_REPORTERS = ["a pharmacist", "the treating physician", "a nurse", "the patient", "a relative", "a hospital doctor"]
_DRUGS = [("amoxicillin", "500"), ("metformin", "850"), ("ibuprofen", "400"), ("atorvastatin", "20"),
          ("lisinopril", "10"), ("sertraline", "50"), ("omeprazole", "20"), ("warfarin", "5"),
          ("levothyroxine", "75"), ("amlodipine", "5"), ("prednisolone", "25"), ("ciprofloxacin", "250")]
_INDICATIONS = ["an ear infection", "type 2 diabetes", "back pain", "high cholesterol", "hypertension", "depression",
                "reflux", "atrial fibrillation", "hypothyroidism", "asthma", "a urinary tract infection"]
_EVENTS = ["a skin rash", "nausea and dizziness", "severe headache", "muscle pain", "a dry cough", "swollen ankles",
           "blurred vision", "palpitations", "stomach cramps", "insomnia", "a nosebleed", "fatigue"]
_OUTCOMES = ["recovered", "recovering", "not recovered", "recovered with sequelae", "unknown"]


def make_report(rng: random.Random) -> str:
    """One synthetic adverse-event report; the phone number (10 digits) is its last run of digits."""
    drug, dose = rng.choice(_DRUGS)
    born = f"{rng.randint(1, 28)} {rng.choice(['March', 'May', 'June', 'July', 'October', 'December'])} " \
           f"{rng.randint(1935, 2004)}"
    return (f"Report: {rng.choice(_REPORTERS)} described {rng.choice(_FIRST)} {rng.choice(_LAST)}, born {born}, who "
            f"took {drug} {dose} mg for {rng.choice(_INDICATIONS)} and developed {rng.choice(_EVENTS)} after "
            f"{rng.randint(2, 40)} days; outcome {rng.choice(_OUTCOMES)}. Contact phone "
            f"{''.join(rng.choice(DIGITS) for _ in range(10))}.")


@dataclass
class Scenario2Data:
    """Fine-tuning records: ``background`` (seen once), ``groups`` (repeat count -> records
    repeated that many times) and ``heldout`` (never trained on), plus held-out windows of the
    pretraining text (``general_heldout``) to see what fine-tuning costs the base model."""

    tokenizer: object
    background: list[SecretRecord]
    groups: dict[int, list[SecretRecord]]
    heldout: list[SecretRecord]
    general_heldout: list[list[int]]

    def sources(self, dedup: bool = False) -> list[Source]:
        """Background records once, each group's records its repeat count of times (once each with ``dedup``)."""
        return [Source([r.tokens for r in self.background])] + [
            Source([r.tokens for r in records], 1 if dedup else n) for n, records in self.groups.items()]


def build_scenario2(tokenizer, general_heldout: list[list[int]], s, seed: int) -> Scenario2Data:
    """Distinct synthetic reports for one seed, encoded with ``tokenizer``."""
    rng = random.Random(20_000 + seed)
    seen: set[str] = set()
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id]

    def fresh() -> SecretRecord:
        while True:
            text = make_report(rng)
            if text not in seen:
                seen.add(text)
                return encode_secret_record(text, tokenizer, bos, eos)

    background = [fresh() for _ in range(s.n_background)]
    groups = {int(n): [fresh() for _ in range(s.per_group)] for n in s.repeat_groups}
    heldout = [fresh() for _ in range(s.n_heldout)]
    return Scenario2Data(tokenizer=tokenizer, background=background, groups=groups, heldout=heldout,
                         general_heldout=general_heldout)
